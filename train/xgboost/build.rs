//! Nothing of XGBoost is needed to build (its library is loaded at run
//! time). In a workspace build, though, Cargo unifies features across the
//! packages built together: rayforge-train then comes with its `torch`
//! feature and these binaries link libtorch too, so they get its rpath
//! when libtorch is there (as train/build.rs gives its own).

#[allow(dead_code)]
mod libtorch {
    include!("../../scripts/libtorch_rpath.rs");

    pub(super) fn lib_dir() -> Option<std::path::PathBuf> {
        libtorch_lib_dir()
    }
}

fn main() {
    if let Some(lib) = libtorch::lib_dir().filter(|l| l.is_dir()) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
