// Shared by the build scripts of the crates whose binaries link libtorch
// (`include!`d: train, serve, examples). tch links libtorch from the PyPI
// wheel (scripts/libtorch.sh), which is not on the loader's path: binaries
// get an rpath to its library folder. Where that folder has libtorch_cuda
// (a GPU set-up), it stays linked (`--as-needed` would drop it, and CUDA
// would then look absent). There, rayforge-train's NCCL is found too: the
// torch wheel's NCCL wheel ships `libnccl.so.2`, and cudarc loads
// `libnccl.so`, so a link by that name is made in the build's output folder
// and that folder goes on the rpath as well.

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
        link_nccl(&lib);
    }
}

/// Makes `libnccl.so` loadable by the binaries (see above), when torch's
/// lib folder has none and the NCCL wheel sits beside torch.
fn link_nccl(torch_lib: &std::path::Path) {
    if torch_lib.join("libnccl.so").exists() {
        return;
    }
    // torch/lib -> site-packages/nvidia/nccl/lib
    let Some(nccl) = torch_lib
        .parent()
        .and_then(|torch| torch.parent())
        .map(|site| site.join("nvidia/nccl/lib/libnccl.so.2"))
        .filter(|p| p.exists())
    else {
        println!("cargo:warning=libtorch has CUDA but no NCCL wheel beside it: GPU ranks of rayforge-train will need libnccl.so on LD_LIBRARY_PATH");
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR").map(|d| std::path::PathBuf::from(d).join("nccl")) else {
        return;
    };
    let link = out.join("libnccl.so");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::remove_file(&link);
    if let Err(e) = std::os::unix::fs::symlink(&nccl, &link) {
        println!("cargo:warning=could not link {} as {}: {e}", nccl.display(), link.display());
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", out.display());
}
