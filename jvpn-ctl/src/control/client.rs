//! A blocking client of the control socket (what `jvpn-ctl` uses).

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::FileTypeExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use super::{
    ControlError,
    api::{ClusterStatus, EventRecord, Request, Response, SessionId, SessionInfo, Stats},
};
use crate::session::Policy;

/// How long a request waits for its response.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// One connection to the gateway's control socket.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the control socket at `path`. A missing socket or one nobody
    /// listens on is "gateway not running (...)", naming the path.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ControlError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ControlError::NotRunning(path.clone()),
            io::ErrorKind::ConnectionRefused => match std::fs::symlink_metadata(&path) {
                Ok(m) if !m.file_type().is_socket() => ControlError::Connect {
                    path: path.clone(),
                    cause: io::Error::other("not a socket"),
                },
                _ => ControlError::Refused(path.clone()),
            },
            _ => ControlError::Connect {
                path: path.clone(),
                cause: e,
            },
        })?;
        let writer = stream.try_clone().map_err(|cause| ControlError::Connect {
            path: path.clone(),
            cause,
        })?;
        Ok(Client {
            path,
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&mut self, request: &Request) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| ControlError::Protocol(format!("cannot encode request: {e}")))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| ControlError::io(format!("cannot write to {}", self.path.display()), e))
    }

    /// One line from the gateway, without its newline.
    fn read_line(&mut self) -> Result<String, ControlError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(ControlError::Closed),
            Ok(_) => {
                line.truncate(line.trim_end().len());
                Ok(line)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ControlError::Other(format!(
                    "no answer from the gateway on {} within {} s",
                    self.path.display(),
                    ANSWER_TIMEOUT.as_secs()
                )))
            }
            Err(e) => Err(ControlError::io(
                format!("cannot read from {}", self.path.display()),
                e,
            )),
        }
    }

    /// Sends `request` and returns the `data` of its answer; `{"ok":false}` is
    /// [`ControlError::Remote`] with the gateway's message.
    pub fn request(&mut self, request: &Request) -> Result<serde_json::Value, ControlError> {
        self.send(request)?;
        let _ = self.writer.set_read_timeout(Some(ANSWER_TIMEOUT));
        let line = self.read_line()?;
        match serde_json::from_str::<Response>(&line) {
            Ok(Response::Ok { data }) => Ok(data),
            Ok(Response::Error { error }) => Err(ControlError::Remote(error)),
            Err(e) => Err(ControlError::Protocol(format!("bad response: {e}"))),
        }
    }

    fn typed<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ControlError> {
        let data = self.request(request)?;
        serde_json::from_value(data)
            .map_err(|e| ControlError::Protocol(format!("unexpected response data: {e}")))
    }

    pub fn sessions(&mut self) -> Result<Vec<SessionInfo>, ControlError> {
        self.typed(&Request::Sessions)
    }

    pub fn session(&mut self, id: SessionId) -> Result<SessionInfo, ControlError> {
        self.typed(&Request::Session { id })
    }

    /// Operator kill; the gateway's answer data is ignored.
    pub fn kill(&mut self, id: SessionId) -> Result<(), ControlError> {
        self.request(&Request::Kill { id }).map(drop)
    }

    pub fn stats(&mut self) -> Result<Stats, ControlError> {
        self.typed(&Request::Stats)
    }

    pub fn policy(&mut self) -> Result<Policy, ControlError> {
        self.typed(&Request::Policy)
    }

    /// A cluster node's view of its cluster (`jvpn-ctl cluster status`); a single
    /// gateway answers [`super::api::NOT_A_CLUSTER`].
    pub fn cluster_status(&mut self) -> Result<ClusterStatus, ControlError> {
        self.typed(&Request::ClusterStatus)
    }

    /// Asks a gateway to read its configuration and peers file again
    /// (`jvpn-ctl gateway reload`, `peers add|remove`).
    pub fn reload(&mut self) -> Result<super::api::Reloaded, ControlError> {
        self.typed(&Request::Reload)
    }

    /// A client agent's status (`jvpn-ctl client status`).
    pub fn client_status(&mut self) -> Result<crate::client::ClientStatus, ControlError> {
        self.typed(&Request::Status)
    }

    /// Asks a client agent to move its session to `transport` now.
    pub fn move_to(&mut self, transport: &str) -> Result<(), ControlError> {
        self.request(&Request::Move {
            transport: transport.into(),
        })
        .map(drop)
    }

    /// The gateway's recent events, oldest first.
    pub fn events(&mut self) -> Result<Vec<EventRecord>, ControlError> {
        self.typed(&Request::Events { follow: false })
    }

    /// Follows the event stream: the recent events, then new ones as they happen,
    /// each given to `f` as its JSON line, until `f` returns `false` (→ `Ok`), the
    /// gateway reports an error such as `lagged: N events dropped` (→
    /// [`ControlError::Remote`]) or closes the connection (→ [`ControlError::Closed`]).
    pub fn follow_raw(mut self, mut f: impl FnMut(&str) -> bool) -> Result<(), ControlError> {
        self.send(&Request::Events { follow: true })?;
        let _ = self.writer.set_read_timeout(None);
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| ControlError::Protocol(format!("bad event line: {e}")))?;
            if value.get("ok").is_some() {
                match serde_json::from_value::<Response>(value) {
                    Ok(Response::Error { error }) => return Err(ControlError::Remote(error)),
                    Ok(Response::Ok { .. }) => continue,
                    Err(e) => return Err(ControlError::Protocol(format!("bad response: {e}"))),
                }
            }
            if !f(&line) {
                return Ok(());
            }
        }
    }

    /// [`Client::follow_raw`] with parsed events; events of a kind this client does
    /// not know (a newer gateway) are skipped.
    pub fn follow(self, mut f: impl FnMut(EventRecord) -> bool) -> Result<(), ControlError> {
        self.follow_raw(|line| match serde_json::from_str::<EventRecord>(line) {
            Ok(ev) => f(ev),
            Err(e) => {
                tracing::debug!("skipping unknown event {line}: {e}");
                true
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{
        events::{EventBus, tests::ev},
        server::{
            serve,
            tests::{fake_core, info, temp_dir},
        },
    };

    #[test]
    fn not_running() {
        let dir = temp_dir("cli-none");
        let path = dir.join("jvpn.sock");
        let e = Client::connect(&path).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "gateway not running (no control socket at {})",
                path.display()
            )
        );
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = Client::connect(&path).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "gateway not running (nothing listening on {})",
                path.display()
            )
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        let e = Client::connect(&path).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("cannot connect to {}: not a socket", path.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_and_follow() {
        let dir = temp_dir("cli-req");
        let path = dir.join("jvpn.sock");
        let bus = EventBus::new(16);
        bus.emit(ev(1));
        let _server = serve(&path, fake_core(), bus.clone()).await.unwrap();
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = Client::connect(&p).unwrap();
            assert_eq!(c.sessions().unwrap(), vec![info(0xa1)]);
            assert_eq!(c.session(SessionId(0xa1)).unwrap(), info(0xa1));
            let e = c.session(SessionId(0xb2)).unwrap_err();
            assert_eq!(e.to_string(), "no session 00000000000000b2");
            c.kill(SessionId(0xa1)).unwrap();
            assert!(c.kill(SessionId(0xb2)).is_err());
            assert_eq!(c.stats().unwrap(), Stats::default());
            assert_eq!(c.policy().unwrap(), Policy::default());
            let e = c.cluster_status().unwrap_err();
            assert_eq!(e.to_string(), crate::control::api::NOT_A_CLUSTER);
            assert_eq!(c.events().unwrap(), vec![ev(1)]);
        })
        .await
        .unwrap();

        let p = path.clone();
        let follower = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            Client::connect(&p)
                .unwrap()
                .follow(|e| {
                    got.push(e);
                    got.len() < 3
                })
                .unwrap();
            got
        });
        // Wait until the follower is subscribed (bus.subscribe count isn't public:
        // emit until it has seen the recent event and two more).
        let mut n = 2;
        while !follower.is_finished() {
            bus.emit(ev(n));
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = follower.await.unwrap();
        assert_eq!(got[0], ev(1));
        assert_eq!(got.len(), 3);
        // In order, without gaps.
        assert_eq!(got[2].ts_ms(), got[1].ts_ms() + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
