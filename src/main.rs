//! The `cryo` command line: parses criu-compatible flags, sets up logging, and calls the
//! library. The only place that uses `anyhow`.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use cryo::dump::{dump, DumpOpts};
use cryo::restore::{restore, RestoreOpts, RestoreOutcome};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Checkpoint/restore for Linux processes.
#[derive(Parser)]
#[command(name = "cryo", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Logging flags shared by the subcommands (criu's names).
#[derive(Args, Clone)]
struct LogArgs {
    /// Verbosity 0-4 (0: errors only ... 4: debug); `-v` alone means 4.
    #[arg(short = 'v', long = "verbosity", value_name = "LEVEL", num_args = 0..=1,
          default_missing_value = "4", default_value = "2",
          value_parser = clap::value_parser!(u8).range(0..=4))]
    verbosity: u8,
    /// Write the log to FILE (relative to the images directory, as in criu) instead of stderr.
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Freeze a process and write its state to an images directory; it is killed afterwards
    /// unless --leave-running.
    ///
    /// A process to be killed gives its memory over to the images as they are written (so the
    /// dump needs no memory beyond the process's), and gets it back if the dump fails.
    Dump {
        /// PID of the process to dump.
        #[arg(short = 't', long = "tree", value_name = "PID")]
        pid: i32,
        /// Images directory (created 0700 if missing).
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Leave the process running after the dump.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// The process is a shell job: allow its terminal fds (restore gives it cryo's terminal).
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Replace a checkpoint that is already in DIR.
        #[arg(long)]
        overwrite: bool,
        /// Save the file locks the process holds (restore takes them again); without it a
        /// held lock makes the dump fail.
        #[arg(short = 'l', long = "file-locks")]
        file_locks: bool,
        /// Allow a datagram unix socket connected to a named socket outside the process;
        /// restore connects it to that name again.
        #[arg(long = "ext-unix-sk")]
        ext_unix_sk: bool,
        /// Checkpoint established TCP connections (TCP repair mode). Their packets are
        /// dropped by a firewall rule from the freeze until restore (or until the dump ends
        /// with --leave-running or fails). Without it, an established connection makes the
        /// dump fail.
        #[arg(long = "tcp-established")]
        tcp_established: bool,
        /// Leave out TCP connections still being set up (waiting in a listener's accept
        /// queue) instead of refusing the dump; they are reset.
        #[arg(long = "skip-in-flight")]
        skip_in_flight: bool,
        /// How packets of dumped TCP connections are held off: nftables (default, iptables
        /// if nft is not installed), iptables, or skip (no rule: keep the peers quiet yourself).
        #[arg(long = "network-lock", value_name = "METHOD", default_value = "nftables",
              value_parser = ["nftables", "iptables", "skip"])]
        network_lock: String,
        /// Sign the checkpoint: an HMAC-SHA256, under the key held in FILE (all its bytes, at
        /// least 16), over a SHA-256 of every image file, written to DIR/signature.img.
        #[arg(long = "sign-key", value_name = "FILE")]
        sign_key: Option<PathBuf>,
        /// Print figures about the dump (times, pages scanned, written, skipped) on stdout.
        #[arg(long)]
        print_stats: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Restore the process saved in an images directory, with its original PID.
    Restore {
        /// Images directory.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Return as soon as the process runs instead of waiting for it to exit.
        #[arg(short = 'd', long = "restore-detached")]
        detach: bool,
        /// Write the PID of the restored process to FILE.
        #[arg(long = "pidfile", value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// Restore a shell job: terminal fds get cryo's terminal.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Restore established TCP connections as closed sockets (their peers are not kept).
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        /// Leave the page store in the page cache. By default the pages of a big process (64
        /// MiB or more) are dropped from it as they are placed, so the restore takes back the
        /// memory it reads instead of fresh memory; keep them to restore one checkpoint again
        /// and again without reading it from the disk.
        #[arg(long = "keep-page-cache")]
        keep_page_cache: bool,
        /// Restore into an existing namespace instead of cryo's own: `net:PATH` (a network
        /// namespace file such as /run/netns/NAME or /proc/PID/ns/net). Sockets are created
        /// and the network lock is handled there.
        #[arg(long = "join-ns", value_name = "NS:PATH")]
        join_ns: Vec<String>,
        /// Verify the checkpoint's signature with the key in FILE before anything else, and
        /// refuse it if it is unsigned, signed with another key, or altered in any byte.
        /// Without this flag a signed checkpoint is restored without checking its signature.
        #[arg(long = "sign-key", value_name = "FILE")]
        sign_key: Option<PathBuf>,
        /// Print figures about the restore (times, pages read) on stdout.
        #[arg(long)]
        print_stats: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Check whether this kernel has what cryo needs.
    Check {
        #[command(flatten)]
        log: LogArgs,
    },
    /// Print a checkpoint in readable form.
    Show {
        /// Images directory.
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(log: &LogArgs, dir: Option<&Path>) -> Result<()> {
    let level = match log.verbosity {
        0 | 1 => tracing::Level::ERROR,
        2 => tracing::Level::WARN,
        3 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    match &log.log_file {
        Some(f) => {
            let path = match dir {
                Some(d) if f.is_relative() => d.join(f),
                _ => f.clone(),
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Dump {
            pid,
            dir,
            leave_running,
            shell_job,
            overwrite,
            file_locks,
            ext_unix_sk,
            tcp_established,
            skip_in_flight,
            network_lock,
            sign_key,
            print_stats,
            log,
        } => {
            init_logging(&log, Some(&dir))?;
            use cryo::net::lock::Backend;
            let network_lock = match network_lock.as_str() {
                "skip" => None,
                "iptables" => Some(Backend::Iptables),
                // nft if installed, else iptables: checked only when a connection needs it.
                _ => Some(Backend::detect().unwrap_or(Backend::Nftables)),
            };
            let opts = DumpOpts {
                pid,
                dir: dir.clone(),
                leave_running,
                shell_job,
                overwrite,
                file_locks,
                ext_unix_sk,
                sign_key,
                tcp_established,
                skip_in_flight,
                network_lock,
            };
            let stats = dump(&opts)
                .with_context(|| format!("dump of pid {pid} into {} failed", dir.display()))?;
            if print_stats {
                print!("{}", cryo::stats::render_dump(&stats));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore {
            dir,
            detach,
            pidfile,
            shell_job,
            tcp_close,
            keep_page_cache,
            join_ns,
            sign_key,
            print_stats,
            log,
        } => {
            init_logging(&log, Some(&dir))?;
            for ns in &join_ns {
                match ns.split_once(':') {
                    Some(("net", path)) => cryo::net::Netns::open_path(path)
                        .and_then(|n| n.join())
                        .with_context(|| format!("joining the network namespace {path}"))?,
                    _ => anyhow::bail!(
                        "--join-ns {ns}: only net:PATH is supported (a network namespace file)"
                    ),
                }
            }
            let opts = RestoreOpts {
                dir: dir.clone(),
                detach,
                pidfile,
                shell_job,
                sign_key,
                tcp_close,
                keep_page_cache,
            };
            let outcome =
                restore(&opts).with_context(|| format!("restore from {} failed", dir.display()));
            if print_stats {
                print!(
                    "{}",
                    cryo::stats::render_restore(&cryo::stats::take_restore())
                );
            }
            match outcome? {
                RestoreOutcome::Detached { .. } => Ok(ExitCode::SUCCESS),
                RestoreOutcome::Exited { code, .. } => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
            }
        }
        Cmd::Check { log } => {
            init_logging(&log, None)?;
            let checks = cryo::check::run_checks();
            print!("{}", cryo::check::render(&checks));
            let ok = checks.iter().all(|c| c.ok || !c.required);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Show { dir, json } => {
            let text = cryo::image::show::render(&dir, json)
                .with_context(|| format!("reading checkpoint {}", dir.display()))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    cryo::sys::proc_ctl::tune_malloc();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cryo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
