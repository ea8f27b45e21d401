//! `python -m torch.distributed.run` started in a process group of its own, its output in
//! `torchrun.log`, and stopped as a whole.
//!
//! torchrun's agent starts each worker in a new session (`start_new_session=True` in
//! `torch.distributed.elastic`'s `SubprocessHandler`), so the workers are not in the agent's
//! group: [`Launch::stop`] signals the agent's group and the group of every process below it,
//! SIGTERM first (the agent then stops its workers itself), SIGKILL to whatever is left after
//! the grace period.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustix::process::Signal;

use super::options::TorchrunOptions;

/// How long the processes get to end after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The torchrun command: `python -m torch.distributed.run` with `--standalone` on one machine,
/// else the static rendezvous flags, then the script and its job file. `threads` goes into
/// `OMP_NUM_THREADS`.
pub fn command(
    python: &Path,
    script: &Path,
    job: &Path,
    opts: &TorchrunOptions,
    threads: usize,
) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "torch.distributed.run"]);
    if opts.nnodes <= 1 {
        cmd.arg("--standalone");
    } else {
        cmd.arg(format!("--nnodes={}", opts.nnodes))
            .arg(format!("--node-rank={}", opts.node_rank))
            .arg(format!("--master-addr={}", opts.master_addr))
            .arg(format!("--master-port={}", opts.master_port));
    }
    cmd.arg(format!("--nproc-per-node={}", opts.nproc_per_node))
        .arg(script)
        .arg("--job")
        .arg(job)
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    cmd
}

/// A running torchrun.
#[derive(Debug)]
pub struct Launch {
    child: Child,
    /// The agent's pid, which is its process group's id.
    pgid: i32,
    /// `torchrun.log`.
    pub log: PathBuf,
}

impl Launch {
    /// Starts `cmd` in a new process group with stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {log:?}"))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {log:?}"))?;
        cmd.stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {:?} (the reference venv's python; run scripts/setup-venv.sh)",
                cmd.get_program()
            )
        })?;
        let pgid = i32::try_from(child.id()).context("process id out of range")?;
        Ok(Self {
            child,
            pgid,
            log: log.to_path_buf(),
        })
    }

    /// The agent's process id.
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// The exit status when torchrun has ended.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Stops torchrun and its workers: SIGTERM to every group, SIGKILL after `grace` to what
    /// is left; returns once the agent has exited and no process below it lives.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let mut groups = vec![self.pgid];
        let below = descendants(self.pgid);
        groups.extend(below.iter().map(|p| p.pgid));
        groups.sort_unstable();
        groups.dedup();
        signal_groups(&groups, Signal::TERM);
        let deadline = Instant::now() + grace;
        let mut status = None;
        while Instant::now() < deadline {
            if status.is_none() {
                status = self.child.try_wait()?;
            }
            if let Some(s) = status
                && below.iter().all(|p| !alive(p.pid))
            {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Workers started after the first look are below the agent too.
        groups.extend(descendants(self.pgid).iter().map(|p| p.pgid));
        signal_groups(&groups, Signal::KILL);
        let status = match status {
            Some(s) => s,
            None => self.child.wait()?,
        };
        let deadline = Instant::now() + grace;
        while below.iter().any(|p| alive(p.pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(status)
    }
}

/// Sends `sig` to each process group (`kill(-pgid, sig)` through rustix); a group that is
/// already gone is fine.
fn signal_groups(groups: &[i32], sig: Signal) {
    for &g in groups {
        if g > 1
            && let Some(pid) = rustix::process::Pid::from_raw(g)
        {
            // ESRCH (the group ended meanwhile) is what stopping wants.
            let _ = rustix::process::kill_process_group(pid, sig);
        }
    }
}

/// Turns Ctrl+C (SIGINT), SIGTERM and SIGHUP of this process into `control.cancel()` for the
/// CLI: torchrun runs in a process group of its own, out of reach of the terminal's Ctrl+C, so
/// without this an interrupted `maskstudio train` would leave its ranks training. The signals
/// set a flag (`signal_hook::flag`); a `torchrun-interrupt` thread watches it, and the run then
/// stops every rank and stays resumable from its last finished epoch.
pub fn cancel_on_interrupt(control: &crate::train::trainer::TrainControl) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use std::sync::atomic::{AtomicBool, Ordering};
    let interrupted = std::sync::Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&interrupted))
            .with_context(|| format!("could not handle signal {sig}"))?;
    }
    let control = control.clone();
    std::thread::Builder::new()
        .name("torchrun-interrupt".into())
        .spawn(move || {
            while !interrupted.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("interrupted: stopping every torchrun process (resume with --resume)");
            control.cancel();
        })
        .context("starting the torchrun-interrupt thread")?;
    Ok(())
}

/// A process as `/proc/<pid>/stat` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// State letter (`Z` for a zombie).
    pub state: char,
}

/// `/proc/<pid>/stat` parsed (the name in parentheses may hold spaces and parentheses).
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgid,
        state,
    })
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    proc_info(pid).is_some_and(|p| p.state != 'Z' && p.state != 'X')
}

/// Every process below `root` (children, their children, …).
pub fn descendants(root: i32) -> Vec<ProcInfo> {
    let all: Vec<ProcInfo> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(proc_info)
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<ProcInfo> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p) {
            if !out.iter().any(|o| o.pid == c.pid) {
                out.push(*c);
                frontier.push(c.pid);
            }
        }
    }
    out
}

/// The DDP script's error lines in `path` (`ddp_train: …` lines other than its progress
/// lines), each once (every rank prints its own).
pub fn script_errors(path: &Path) -> Vec<String> {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let progress = |rest: &str| {
        rest.starts_with("epoch ")
            || rest.starts_with("early stopping")
            || rest
                .split_once(' ')
                .is_some_and(|(n, r)| n.parse::<usize>().is_ok() && r.starts_with("process(es)"))
    };
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ddp_train: ")
            && !progress(rest)
            && !out.iter().any(|l| l == line)
        {
            out.push(line.to_owned());
        }
    }
    out
}

/// The last `n` lines of `path` (for an error message).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ends_a_process_tree_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        // A parent whose child starts its own session and ignores SIGTERM, like a stuck worker.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("setsid sh -c 'trap \"\" TERM; echo child; sleep 60' & echo parent; wait");
        let mut launch = Launch::spawn(cmd, &log).unwrap();
        let t0 = Instant::now();
        while descendants(launch.pid()).len() < 2 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let below = descendants(launch.pid());
        assert!(!below.is_empty());
        assert!(
            below.iter().any(|p| p.pgid != launch.pid()),
            "the child has a group of its own: {below:?}"
        );
        launch.stop(Duration::from_millis(300)).unwrap();
        for p in &below {
            assert!(!alive(p.pid), "{p:?} survived");
        }
        assert!(log_tail(&log, 5).contains("parent"));
    }

    #[test]
    fn the_scripts_error_lines_are_picked_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("torchrun.log");
        std::fs::write(
            &log,
            "ddp_train: 2 process(es), 18 training images, 3 steps per epoch\n\
             ddp_train: epoch 0: 3 steps, mean loss 3.1, 9.0 s\n\
             ddp_train: job.json: recipe.augment.repeat_threshold: not supported\n\
             ddp_train: job.json: recipe.augment.repeat_threshold: not supported\n\
             ddp_train: rank 1: RuntimeError: gloo timed out\n\
             Root Cause (first observed failure):\n",
        )
        .unwrap();
        assert_eq!(
            script_errors(&log),
            [
                "ddp_train: job.json: recipe.augment.repeat_threshold: not supported",
                "ddp_train: rank 1: RuntimeError: gloo timed out"
            ]
        );
        assert_eq!(log_tail(&log, 1), "Root Cause (first observed failure):");
    }

    #[test]
    fn torchrun_flags_follow_the_node_count() {
        let opts = TorchrunOptions::default();
        let cmd = command(Path::new("py"), Path::new("s.py"), Path::new("j"), &opts, 1);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "s.py",
                "--job",
                "j"
            ]
        );
        let opts = TorchrunOptions {
            nnodes: 2,
            node_rank: 1,
            master_addr: "10.0.0.1".into(),
            master_port: 29400,
            nproc_per_node: 4,
            init: None,
        };
        let cmd = command(Path::new("py"), Path::new("s.py"), Path::new("j"), &opts, 3);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[2..7],
            [
                "--nnodes=2",
                "--node-rank=1",
                "--master-addr=10.0.0.1",
                "--master-port=29400",
                "--nproc-per-node=4"
            ]
        );
        let omp = cmd
            .get_envs()
            .find(|(k, _)| *k == "OMP_NUM_THREADS")
            .and_then(|(_, v)| v);
        assert_eq!(omp, Some(std::ffi::OsStr::new("3")));
    }
}
