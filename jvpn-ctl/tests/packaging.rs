//! What `cargo xtask dist` ships, checked against the built `jvpn-ctl`: the example
//! configurations pass `jvpn-ctl config check`, the systemd units pass
//! `systemd-analyze verify`, and `jvpn-ctl generate` writes completions and man pages.
//! No root needed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

const BIN: &str = env!("CARGO_BIN_EXE_jvpn-ctl");
const ROLES: [&str; 3] = ["gateway", "exit", "client"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("jvpn-ctl is in the workspace")
        .to_path_buf()
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "jvpn-packaging-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jvpn_ctl(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running jvpn-ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn config_check_accepts_the_examples() {
    for role in ROLES {
        let path = repo().join(format!("scripts/examples/{role}.toml"));
        let p = path.to_str().unwrap();
        for args in [
            vec!["config", "check", p],
            vec!["config", "check", "--role", role, p],
        ] {
            let out = jvpn_ctl(&args);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
            let want = format!("{p}: a valid {role} configuration");
            if args.len() == 3 {
                assert!(
                    stdout.starts_with(&format!("{want} (role assumed from its keys: ")),
                    "{stdout}"
                );
            } else {
                assert_eq!(stdout, format!("{want}\n"));
            }
            // The key files it names are not on this machine: warnings (and so is a
            // missing `nft`, for the exit's [nat]).
            assert!(!stderr.is_empty(), "{args:?}");
            for line in stderr.lines() {
                assert!(
                    line.starts_with("warning: ")
                        && (line.contains("/etc/jvpn/") || line.starts_with("warning: nat: ")),
                    "{line}"
                );
            }
        }
    }
}

#[test]
fn config_check_fails_naming_the_key() {
    let dir = TempDir::new("check");
    let example = std::fs::read_to_string(repo().join("scripts/examples/gateway.toml")).unwrap();
    let bad = dir.0.join("gateway.toml");
    std::fs::write(&bad, example.replace("10.99.0.0/24", "10.99.0.0/31")).unwrap();
    let out = jvpn_ctl(&["config", "check", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    let error = stderr.lines().last().unwrap();
    assert_eq!(
        error,
        format!(
            "error: {}: not a valid gateway configuration (role assumed from its keys; \
             --role to choose): pool.cidr: needs at least a /30",
            bad.display()
        )
    );
    let out = jvpn_ctl(&["config", "check", "--role", "client", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not a valid client configuration: ") && stderr.contains("unknown field `"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// `jvpn-ctl generate --out DIR`; returns DIR.
fn generate() -> TempDir {
    let dir = TempDir::new("generate");
    let out = jvpn_ctl(&["generate", "--out", dir.0.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    dir
}

#[test]
fn generate_writes_completions_and_man_pages() {
    let dir = generate();
    for file in ["jvpn-ctl.bash", "_jvpn-ctl", "jvpn-ctl.fish"] {
        let path = dir.0.join("completions").join(file);
        let script = std::fs::read_to_string(&path).unwrap();
        for verb in [
            "gateway", "exit", "client", "config", "sessions", "datapath",
        ] {
            assert!(script.contains(verb), "{file} lacks {verb}");
        }
        assert!(
            !script.contains("generate"),
            "{file} completes the hidden verb"
        );
    }
    let man = dir.0.join("man/man1");
    for page in [
        "jvpn-ctl.1",
        "jvpn-ctl-gateway.1",
        "jvpn-ctl-exit.1",
        "jvpn-ctl-client.1",
        "jvpn-ctl-config-check.1",
        "jvpn-ctl-datapath-up.1",
    ] {
        let roff =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(roff.starts_with(".ie \\n(.g .ds Aq"), "{page}: {roff:.80}");
        assert!(roff.contains(".SH NAME"), "{page}");
    }
    let gateway = std::fs::read_to_string(man.join("jvpn-ctl-gateway.1")).unwrap();
    assert!(gateway.contains("\\-\\-config"), "{gateway}");
    assert!(!man.join("jvpn-ctl-generate.1").exists());
    // The hidden verb stays out of the help too.
    let help = text(&jvpn_ctl(&["--help"]).stdout);
    assert!(
        help.contains("config") && !help.contains("generate"),
        "{help}"
    );
}

/// The units as installed, checked by systemd itself. `verify` insists that
/// ExecStart's binary exists and that `Documentation=man:` pages open, so the copies
/// run the built jvpn-ctl and MANPATH points at the generated pages. Every line it
/// prints about our units fails the test (its complaints about the host's own units
/// are not ours).
#[test]
fn systemd_units_verify() {
    let units: Vec<PathBuf> = ROLES
        .iter()
        .map(|r| repo().join(format!("scripts/systemd/jvpn-{r}.service")))
        .collect();
    for (role, unit) in ROLES.iter().zip(&units) {
        let text = std::fs::read_to_string(unit).unwrap();
        let exec: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect();
        assert_eq!(
            exec,
            [format!(
                "/usr/local/bin/jvpn-ctl {role} --config /etc/jvpn/{role}.toml"
            )],
            "{}",
            unit.display()
        );
    }
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("systemd-analyze is not installed: the units are not verified");
        return;
    };
    let generated = generate();
    let dir = TempDir::new("units");
    let copies: Vec<PathBuf> = units
        .iter()
        .map(|unit| {
            let text = std::fs::read_to_string(unit).unwrap().replace(
                "ExecStart=/usr/local/bin/jvpn-ctl ",
                &format!("ExecStart={BIN} "),
            );
            let copy = dir.0.join(unit.file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            copy
        })
        .collect();
    let out = Command::new(analyze)
        .arg("verify")
        .args(&copies)
        .env("MANPATH", generated.0.join("man"))
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let ours: Vec<&str> = all
        .lines()
        .filter(|l| {
            ROLES
                .iter()
                .any(|r| l.contains(&format!("jvpn-{r}.service")))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify ({}):\n{}",
        out.status,
        ours.join("\n")
    );
    if !out.status.success() {
        eprintln!("systemd-analyze verify failed, but not about our units:\n{all}");
    }
}
