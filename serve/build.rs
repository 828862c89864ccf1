//! With the `torch` feature, binaries get an rpath to libtorch (see
//! scripts/libtorch_rpath.rs).

include!("../scripts/libtorch_rpath.rs");

fn main() {
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some() {
        link_libtorch();
    }
}
