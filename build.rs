//! Embeds an rpath to libtorch so the binary and the tests run without LD_LIBRARY_PATH, and keeps
//! libtorch_cuda linked (the linker's --as-needed would drop it: no symbol is referenced directly,
//! yet CUDA is only available in libtorch when that library is loaded).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run scripts/setup-venv.sh (or ./studio) first"
        );
        return;
    };
    // Resolve the `.libtorch` symlink so the rpath names the real venv folder.
    let libtorch = PathBuf::from(libtorch);
    let lib_dir = libtorch.canonicalize().unwrap_or(libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}
