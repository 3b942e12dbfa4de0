//! The `cryo` command line itself: `cryo check` on this machine, and the help of every
//! subcommand naming criu's flags.

mod common;

use common::*;

fn stdout_of(args: &[&str]) -> String {
    let out = cryo_output(args, TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        show_output(&format!("cryo {}", args.join(" ")), &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cryo check` passes here and reports every feature it probes.
#[test]
fn check_exits_zero_and_lists_features() {
    if !require_root("check_exits_zero_and_lists_features") {
        return;
    }
    let text = stdout_of(&["check"]);
    for feature in [
        "PTRACE_SEIZE",
        "clone3 set_tid",
        "ns_last_pid",
        "PR_SET_MM_MAP",
        "userfaultfd",
        "UFFD_FEATURE_WP_ASYNC",
        "PAGEMAP_SCAN",
        "TCP_REPAIR",
        "PTRACE_GET_RSEQ_CONFIGURATION",
        "pidfd_open/pidfd_getfd",
        "process_vm_readv",
        "soft-dirty",
        "kcmp",
    ] {
        assert!(
            text.contains(feature),
            "`cryo check` does not list {feature}:\n{text}"
        );
    }
    assert!(text.contains("cryo can work here"), "{text}");
}

fn assert_help_mentions(cmd: &str, flags: &[&str]) {
    let text = stdout_of(&[cmd, "--help"]);
    for flag in flags {
        assert!(
            text.contains(flag),
            "`cryo {cmd} --help` does not mention {flag}:\n{text}"
        );
    }
}

#[test]
fn top_level_help_lists_subcommands() {
    let text = stdout_of(&["--help"]);
    for cmd in ["dump", "restore", "check", "show"] {
        assert!(
            text.contains(cmd),
            "`cryo --help` does not list {cmd}:\n{text}"
        );
    }
}

#[test]
fn dump_help_mentions_flags() {
    assert_help_mentions(
        "dump",
        &[
            "-t",
            "-D",
            "-R",
            "--leave-running",
            "-j",
            "--shell-job",
            "-v",
            "-o",
            "--log-file",
            "--overwrite",
        ],
    );
}

#[test]
fn restore_help_mentions_flags() {
    assert_help_mentions(
        "restore",
        &[
            "-D",
            "-d",
            "--restore-detached",
            "--pidfile",
            "-j",
            "--shell-job",
            "-v",
            "-o",
            "--log-file",
        ],
    );
}

#[test]
fn show_help_mentions_flags() {
    assert_help_mentions("show", &["-D", "--json"]);
}

#[test]
fn check_help_is_available() {
    assert_help_mentions("check", &["-v"]);
}
