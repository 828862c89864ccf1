// Shared by the build scripts of the crates whose binaries link libtorch
// (`include!`d: train, serve, examples). tch links libtorch from the PyPI
// wheel (scripts/libtorch.sh), which is not on the loader's path: binaries
// get an rpath to its library folder. Where that folder has libtorch_cuda
// (a GPU set-up), it stays linked (`--as-needed` would drop it, and CUDA
// would then look absent).

/// The folder holding libtorch's shared libraries, if it can be found.
fn libtorch_lib_dir() -> Option<std::path::PathBuf> {
    for var in ["RAYFORGE_LIBTORCH_LIB", "LIBTORCH", "RAYFORGE_TORCH_PYTHON", "LIBTORCH_USE_PYTORCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Ok(lib) = std::env::var("RAYFORGE_LIBTORCH_LIB") {
        return Some(lib.into());
    }
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(std::path::PathBuf::from(root).join("lib"));
    }
    let python = std::env::var("RAYFORGE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Emits the rpath (and the CUDA link) for this package's binaries.
fn link_libtorch() {
    let Some(lib) = libtorch_lib_dir() else {
        println!("cargo:warning=libtorch not found: build through scripts/test.sh or `source scripts/libtorch.sh`");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
