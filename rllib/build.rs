//! Test binaries get an rpath to libtorch (see scripts/libtorch_rpath.rs).

include!("../scripts/libtorch_rpath.rs");

fn main() {
    link_libtorch();
}
