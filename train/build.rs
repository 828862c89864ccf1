//! Test binaries get an rpath to libtorch (see scripts/libtorch_rpath.rs),
//! and `src/rng_state.cpp` (libtorch's generator state as bytes, which tch
//! 0.24 does not expose), `src/autocast.cpp` (autocast on the CPU, and its
//! dtype) and `src/grad_hook.cpp` (a hook once a parameter's gradient is
//! accumulated, to overlap the all-reduce with backward) are compiled
//! against the headers of the libtorch tch links, as torch-sys compiles
//! its own C++ wrapper. All of it only with the `torch` feature (the
//! default).

include!("../scripts/libtorch_rpath.rs");

fn main() {
    // Without the `torch` feature nothing links libtorch (rayforge-xgboost).
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some() {
        link_libtorch();
        compile_rng_shim();
    }
}

fn compile_rng_shim() {
    println!("cargo:rerun-if-changed=src/rng_state.cpp");
    println!("cargo:rerun-if-changed=src/autocast.cpp");
    println!("cargo:rerun-if-changed=src/grad_hook.cpp");
    for var in ["LIBTORCH_INCLUDE", "LIBTORCH_CXX11_ABI"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let include = match std::env::var("LIBTORCH_INCLUDE") {
        Ok(dir) => std::path::PathBuf::from(dir).join("include"),
        Err(_) => match libtorch_lib_dir().and_then(|lib| lib.parent().map(|p| p.join("include"))) {
            Some(dir) => dir,
            None => {
                panic!("libtorch's headers not found: build through scripts/test.sh or `source scripts/libtorch.sh`")
            }
        },
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("src/rng_state.cpp")
        .file("src/autocast.cpp")
        .file("src/grad_hook.cpp")
        .compile("rayforge_train_rng");
}
