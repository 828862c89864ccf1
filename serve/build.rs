//! With the `torch` feature, binaries get an rpath to torch's library folder
//! (tch links libtorch from the PyPI wheel, which is not on the loader's
//! path) and keep libtorch_cuda linked (`--as-needed` would drop it, and
//! CUDA would then look absent on a GPU machine).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=RAYFORGE_TORCH_PYTHON");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let lib = match std::env::var("LIBTORCH") {
        Ok(root) => std::path::PathBuf::from(root).join("lib"),
        Err(_) => {
            let python = std::env::var("RAYFORGE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
            let out = std::process::Command::new(&python)
                .args([
                    "-c",
                    "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
                ])
                .output();
            match out {
                Ok(o) if o.status.success() => std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
                _ => {
                    println!("cargo:warning=the torch feature needs torch from PyPI: run through serve/scripts/with-torch.sh");
                    return;
                }
            }
        }
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
