# Sourced by scripts/test.sh (and usable by hand: `source scripts/xgboost.sh`):
# makes XGBoost's library, libxgboost.so 3.2.0, available to rayforge-xgboost,
# set up from PyPI alone.
#
# PyPI's xgboost-cpu wheel (no Python code is used: the wheel is only a
# container for libxgboost.so and the OpenMP runtime it is linked with, found
# through its rpath) is unpacked into a cache outside the clone, as
# scripts/libtorch.sh does: $RAYFORGE_CACHE, else $XDG_CACHE_HOME/rayforge,
# else ~/.cache/rayforge (the clone's target/cache when none is writable).
# About 20 MB; nothing is downloaded once the cache has it.
#
# Exports RAYFORGE_XGBOOST_LIB, the path rayforge-xgboost loads the library
# from at run time (nothing of XGBoost is needed to build).
#
# Also unpacks the Palmer penguins table (344 rows; PyPI's palmerpenguins
# 0.1.6 wheel ships it as a CSV, so nothing is downloaded at run time) for
# the XGBoost pipeline example, and exports RAYFORGE_PENGUINS_CSV.

_rf_xgb_version=3.2.0
_rf_xgb_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=scripts/cache-dir.sh
source "$_rf_xgb_root/scripts/cache-dir.sh"

_rf_install_xgboost() {
  local dir="$1" tmp="$1.partial.$$"
  echo "== installing libxgboost $_rf_xgb_version (PyPI's xgboost-cpu wheel) into $dir"
  command -v python3 >/dev/null || { echo "python3 with pip is required to fetch XGBoost from PyPI"; return 1; }
  rm -rf "$tmp"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$tmp" \
    "xgboost-cpu==$_rf_xgb_version" || return 1
  [ -f "$tmp/xgboost/lib/libxgboost.so" ] || { echo "the xgboost-cpu wheel has no libxgboost.so"; return 1; }
  # Only the library and its OpenMP runtime (xgboost_cpu.libs, on its rpath).
  find "$tmp/xgboost" -mindepth 1 -maxdepth 1 ! -name lib -exec rm -rf {} +
  find "$tmp" -mindepth 1 -maxdepth 1 ! -name xgboost ! -name 'xgboost_cpu.libs' -exec rm -rf {} +
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

if [ -z "${RAYFORGE_XGBOOST_LIB:-}" ]; then
  _rf_xgb_dir="$(rayforge_cache_dir)/xgboost-$_rf_xgb_version"
  if [ ! -f "$_rf_xgb_dir/xgboost/lib/libxgboost.so" ]; then
    _rf_install_xgboost "$_rf_xgb_dir" || { echo "XGBoost set-up failed"; return 1 2>/dev/null || exit 1; }
  fi
  export RAYFORGE_XGBOOST_LIB="$_rf_xgb_dir/xgboost/lib/libxgboost.so"
fi
echo "== libxgboost: $RAYFORGE_XGBOOST_LIB"

_rf_install_penguins() {
  local dir="$1" tmp="$1.partial.$$"
  echo "== unpacking the Palmer penguins table (PyPI's palmerpenguins 0.1.6) into $dir"
  rm -rf "$tmp"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$tmp" \
    "palmerpenguins==0.1.6" || return 1
  [ -f "$tmp/palmerpenguins/data/penguins.csv" ] || { echo "the palmerpenguins wheel has no penguins.csv"; return 1; }
  mkdir -p "$tmp/out"
  mv "$tmp/palmerpenguins/data/penguins.csv" "$tmp/out/"
  cp "$tmp"/palmerpenguins-*.dist-info/licenses/LICENSE "$tmp/out/LICENSE" 2>/dev/null || true
  rm -rf "$dir"
  mv "$tmp/out" "$dir"
  rm -rf "$tmp"
}

if [ -z "${RAYFORGE_PENGUINS_CSV:-}" ]; then
  _rf_pg_dir="$(rayforge_cache_dir)/palmerpenguins-0.1.6"
  if [ ! -f "$_rf_pg_dir/penguins.csv" ]; then
    _rf_install_penguins "$_rf_pg_dir" || { echo "penguins set-up failed"; return 1 2>/dev/null || exit 1; }
  fi
  export RAYFORGE_PENGUINS_CSV="$_rf_pg_dir/penguins.csv"
fi
