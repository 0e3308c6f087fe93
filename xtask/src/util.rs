//! Small helpers shared by the verbs: paths, running commands, timing.

use std::{
    env,
    ffi::OsStr,
    fmt, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where bootstrap keeps its tools: `$JVPN_TOOLS_DIR`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/jvpn`. jvpn-ctl's build.rs uses the same rule
/// to find `<tools>/bin/bpf-linker`.
pub fn tools_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("JVPN_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let cache = env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither JVPN_TOOLS_DIR, XDG_CACHE_HOME nor HOME is set: set JVPN_TOOLS_DIR to a writable directory")?;
    Ok(cache.join("jvpn"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Read by jvpn-ctl's build script: `1` shows the XDP program's build output.
pub const BUILD_VERBOSE: &str = "JVPN_BUILD_VERBOSE";

/// Prints one bootstrap progress line: `==> <what> ... <status>`.
pub fn step(what: &str, status: &str) {
    println!("==> {what} ... {status}");
}

/// The cargo that runs xtask (`$CARGO`), so nested builds use the same toolchain.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Looks for an executable named `name` in `$PATH`, then in the sbin directories
/// (which a non-root `$PATH` often lacks).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A command that ran and exited unsuccessfully; `main` exits with its code.
#[derive(Debug)]
pub struct CommandFailed {
    pub command: String,
    pub code: Option<i32>,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed with exit code {code}", self.command),
            None => write!(f, "`{}` was killed by a signal", self.command),
        }
    }
}

impl std::error::Error for CommandFailed {}

/// Renders a command roughly as a shell would show it.
pub fn display(cmd: &Command) -> String {
    // `$CARGO` is a long toolchain path; `cargo` says the same.
    let program = cmd.get_program();
    let program = if Path::new(program).file_name() == Some(OsStr::new("cargo")) {
        OsStr::new("cargo")
    } else {
        program
    };
    std::iter::once(program)
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .map(|a| {
            if a.is_empty() || a.contains([' ', '"', '\'']) {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn_error(cmd: &Command, err: io::Error) -> anyhow::Error {
    let program = cmd.get_program().to_string_lossy();
    if err.kind() == io::ErrorKind::NotFound {
        anyhow::anyhow!("`{program}` not found on PATH")
    } else {
        anyhow::Error::new(err).context(format!("could not start `{}`", display(cmd)))
    }
}

/// Runs `cmd` with inherited stdio (its output streams to the terminal).
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| spawn_error(cmd, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(CommandFailed {
            command: display(cmd),
            code: status.code(),
        }
        .into())
    }
}

/// Runs `cmd` and returns its stdout; on failure the error carries its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            stderr.trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// `0.4s`, `12.3s`, `2m05s`.
pub fn elapsed(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}
