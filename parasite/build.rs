//! Link the parasite as a freestanding static PIE laid out by `parasite.ld`: no C runtime, no
//! libc, only `R_X86_64_RELATIVE` relocations, entry at the start of the text.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| String::from("."));
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static-pie",
        "-Wl,--no-dynamic-linker",
        "-Wl,-z,norelro",
        "-Wl,-z,noexecstack",
        "-Wl,--build-id=none",
        "-Wl,--hash-style=gnu",
        &format!("-Wl,-T,{dir}/parasite.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=parasite.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
