//! Open files and file-like kernel objects across dump and restore (issue 4): each workload
//! sets up its objects, is dumped (and killed), restored, and checks from inside that every
//! object came back as it was. Kinds cryo does not restore make the dump fail before anything
//! is killed, naming the fd and its kind.

mod common;

use common::*;
use std::path::PathBuf;

/// Common preamble: root, a CLI with the subcommands, the workload binary.
fn prepare(test: &str, workload: &str) -> Option<PathBuf> {
    if !require_root(test) {
        return None;
    }
    let bin = workload_bin(test, workload)?;
    require_cli();
    Some(bin)
}

/// Starts `workload`, dumps it (killing it), restores it and returns its check's result.
fn dump_restore_check(test: &str, workload: &str, args: &[&str]) -> Option<String> {
    let bin = prepare(test, workload)?;
    let mut w = Workload::start(&bin, args);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    Some(restore_and_check(&w, images.path()))
}

/// Regular files keep flags, offsets and close-on-exec; a directory continues its getdents
/// walk; /dev/null, /dev/zero, /dev/urandom are reopened; files deleted while open come back
/// deleted, with their contents, mode and a shared inode for two opens.
#[test]
fn regular_files_directories_devices_and_deleted_files() {
    let _serial = serial();
    let test = "regular_files_directories_devices_and_deleted_files";
    if let Some(result) = dump_restore_check(test, "fd_regular", &[]) {
        assert_eq!(result, "PASS");
    }
}

/// dup'd fds (dup, dup2, F_DUPFD_CLOEXEC, stdout and stderr on one file) come back as one
/// open file description: one offset, one set of status flags; a second open stays separate.
#[test]
fn duplicated_fds_share_one_description() {
    let _serial = serial();
    if let Some(result) = dump_restore_check("duplicated_fds_share_one_description", "fd_dup", &[])
    {
        assert_eq!(result, "PASS");
    }
}
