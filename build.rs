//! Build script: compiles the image schemas in `images/*.proto` with protox (no system protoc)
//! and prost-build, and builds the parasite blob (see `parasite/`).

use std::path::PathBuf;

fn main() {
    compile_protos();
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
        .compile_fds(fds)
        .expect("prost code generation");
}
