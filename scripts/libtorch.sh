# Sourced by scripts/test.sh and scripts/demo.sh (and usable by hand:
# `source scripts/libtorch.sh`): makes libtorch 2.11.0, the version tch 0.24
# binds, available to cargo, set up from PyPI alone.
#
# It installs the torch==2.11.0 wheel without its dependencies, plus the two
# CUDA wheels that libtorch_cpu.so needs to load (the CUDA runtime and CUPTI,
# a few MB), into a cache outside the clone: $RAYFORGE_CACHE, else
# $XDG_CACHE_HOME/rayforge, else ~/.cache/rayforge; the clone's target/ when
# none of those is writable. Only the CPU part is kept (about 1 GB instead of
# the 4.6 GB of every CUDA wheel): the GPU libraries, Python modules and
# libtorch_cuda are removed, and libtorch.so is replaced by a shim that links
# libtorch_cpu alone (the wheel's libtorch.so requires libtorch_cuda and
# cuDNN).
#
# For GPUs, `RAYFORGE_TORCH_CUDA=1` installs the whole wheel with its CUDA
# dependencies instead (about 4.6 GB, into libtorch-2.11.0-cuda beside the
# CPU set-up) and links NCCL's `libnccl.so.2` as `libnccl.so` beside
# libtorch, where rayforge-train's NCCL looks for it. Pointing LIBTORCH at
# another torch install with CUDA also works (see README, "Train").
#
# Exports LIBTORCH (what tch's build reads) and RAYFORGE_LIBTORCH_LIB (the
# folder binaries get as rpath, see train/build.rs).

_rf_torch_version=2.11.0
_rf_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=scripts/cache-dir.sh
source "$_rf_root/scripts/cache-dir.sh"

_rf_install_libtorch() {
  local dir="$1" tmp="$1.partial.$$"
  echo "== installing libtorch $_rf_torch_version (CPU part of PyPI's torch wheel) into $dir"
  command -v python3 >/dev/null || { echo "python3 with pip is required to fetch libtorch from PyPI"; return 1; }
  command -v cc >/dev/null || { echo "a C compiler (cc) is required"; return 1; }
  rm -rf "$tmp"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$tmp" \
    "torch==$_rf_torch_version" "nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-cupti==13.0.85.*" || return 1
  local lib="$tmp/torch/lib"
  [ -f "$lib/libtorch_cpu.so" ] || { echo "the torch wheel has no libtorch_cpu.so"; return 1; }
  # Keep the headers and the CPU libraries; drop what a CPU build never loads.
  find "$lib" -maxdepth 1 -name '*.so*' \
    ! -name 'libtorch_cpu.so' ! -name 'libc10.so' ! -name 'libgomp.so.1' ! -name 'libshm.so' -delete
  find "$tmp/torch" -mindepth 1 -maxdepth 1 ! -name include ! -name lib ! -name share -exec rm -rf {} +
  find "$tmp" -mindepth 1 -maxdepth 1 ! -name torch ! -name nvidia -exec rm -rf {} +
  # libtorch.so: tch links it by name; ours needs libtorch_cpu only.
  echo 'void rayforge_libtorch_cpu_shim(void) {}' >"$tmp/shim.c"
  cc -shared -fPIC -o "$lib/libtorch.so" "$tmp/shim.c" -L"$lib" -Wl,--no-as-needed -ltorch_cpu -Wl,-rpath,'$ORIGIN' || return 1
  rm -f "$tmp/shim.c" "$tmp"/nvidia/*/lib/*.a
  echo "$_rf_torch_version" >"$tmp/torch/build-version"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

_rf_install_libtorch_cuda() {
  local dir="$1" tmp="$1.partial.$$"
  echo "== installing libtorch $_rf_torch_version with CUDA (PyPI's torch wheel and its CUDA wheels, ~4.6 GB) into $dir"
  command -v python3 >/dev/null || { echo "python3 with pip is required to fetch libtorch from PyPI"; return 1; }
  rm -rf "$tmp"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$tmp" \
    "torch==$_rf_torch_version" || return 1
  [ -f "$tmp/torch/lib/libtorch_cuda.so" ] || { echo "the torch wheel has no libtorch_cuda.so"; return 1; }
  [ -f "$tmp/nvidia/nccl/lib/libnccl.so.2" ] || { echo "no NCCL wheel came with torch"; return 1; }
  ln -sf ../../nvidia/nccl/lib/libnccl.so.2 "$tmp/torch/lib/libnccl.so"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

if [ -z "${LIBTORCH:-}" ]; then
  if [ "${RAYFORGE_TORCH_CUDA:-0}" = 1 ]; then
    _rf_dir="$(rayforge_cache_dir)/libtorch-$_rf_torch_version-cuda"
    if [ ! -e "$_rf_dir/torch/lib/libnccl.so" ]; then
      _rf_install_libtorch_cuda "$_rf_dir" || { echo "libtorch set-up failed"; return 1 2>/dev/null || exit 1; }
    fi
  else
    _rf_dir="$(rayforge_cache_dir)/libtorch-$_rf_torch_version-cpu"
    if [ ! -f "$_rf_dir/torch/lib/libtorch.so" ]; then
      _rf_install_libtorch "$_rf_dir" || { echo "libtorch set-up failed"; return 1 2>/dev/null || exit 1; }
    fi
  fi
  export LIBTORCH="$_rf_dir/torch"
fi
export RAYFORGE_LIBTORCH_LIB="$LIBTORCH/lib"
# Binaries carry an rpath to it; this covers tools that load libtorch otherwise.
export LD_LIBRARY_PATH="$RAYFORGE_LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _rf_dir
