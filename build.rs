//! Build script: compiles the image schemas in `images/*.proto` with protox (no system protoc)
//! and prost-build, and builds the parasite blob (see `parasite/`).

use std::path::PathBuf;

fn main() {
    compile_protos();
    build_parasite();
}

/// Builds the `parasite/` crate (a freestanding static PIE, see `parasite/build.rs`) with a
/// nested cargo into its own target directory under OUT_DIR, and copies the blob to
/// `OUT_DIR/parasite.elf` for `include_bytes!` in `src/infect/parasite.rs`.
fn build_parasite() {
    for f in [
        "parasite/Cargo.toml",
        "parasite/build.rs",
        "parasite/parasite.ld",
        "parasite/src",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR set"));
    let target_dir = out.join("parasite-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| String::from("cargo"));
    let target = std::env::var("TARGET").expect("TARGET set by cargo");
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(manifest_dir.join("parasite/Cargo.toml"))
        .arg("--target")
        .arg(&target)
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage, sanitizers) must not reach the
    // freestanding blob; nor must the rustflags of the repository's .cargo/config.toml (the
    // nested cargo reads it too): rustflags given in the environment, even none, replace them.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "");
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_LTO",
        "CARGO_PROFILE_RELEASE_PANIC",
        "CARGO_PROFILE_RELEASE_OPT_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the parasite blob");
    assert!(status.success(), "building the parasite blob failed");
    let blob = target_dir.join(&target).join("release/cryo-parasite");
    std::fs::copy(&blob, out.join("parasite.elf")).expect("copy the parasite blob");
}

fn compile_protos() {
    let files = [
        "images/inventory.proto",
        "images/pstree.proto",
        "images/core.proto",
        "images/mm.proto",
        "images/fdinfo.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["images"]).expect("image schemas compile");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    prost_build::Config::new()
        .out_dir(&out)
        // Socket queues (megabytes) as `bytes::Bytes`: decoded without a copy from the mapped
        // image, cloned without one.
        .bytes([".cryo.TcpConnection.inq", ".cryo.TcpConnection.outq"])
        .compile_fds(fds)
        .expect("prost code generation");
}
