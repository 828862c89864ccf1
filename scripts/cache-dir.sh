# Sourced by scripts/libtorch.sh, scripts/gym-venv.sh and scripts/s3-venv.sh: rayforge_cache_dir
# prints the folder downloads are kept in across clones — $RAYFORGE_CACHE,
# else $XDG_CACHE_HOME/rayforge, else ~/.cache/rayforge, else the clone's
# target/cache (the first that can be written).

rayforge_cache_dir() {
  local c root
  for c in "${RAYFORGE_CACHE:-}" "${XDG_CACHE_HOME:+$XDG_CACHE_HOME/rayforge}" "${HOME:+$HOME/.cache/rayforge}"; do
    if [ -n "$c" ] && mkdir -p "$c" 2>/dev/null && [ -w "$c" ]; then
      echo "$c"
      return
    fi
  done
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  mkdir -p "$root/target/cache"
  echo "$root/target/cache"
}

# rayforge_pip_venv VENV WHEELS OK PIN...: makes the venv VENV hold the PINs,
# installed from the wheel cache folder WHEELS (under rayforge_cache_dir) and
# downloaded into it first when it lacks one; OK is Python code that must run
# in the venv afterwards (it checks the versions).
rayforge_pip_venv() {
  local venv="$1" wheels="$(rayforge_cache_dir)/$2" ok="$3"
  shift 3
  mkdir -p "$wheels"
  command -v python3 >/dev/null || { echo "python3 (with venv and pip) is required"; return 1; }
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    python3 -m venv "$venv" || return 1
  fi
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
  # From the cache first; when it lacks a wheel (first run, or another Python
  # version), download into it and install from it again.
  if ! "${pip[@]}" install --no-index --find-links "$wheels" "$@" 2>/dev/null; then
    echo "== downloading $* into $wheels"
    "${pip[@]}" download --dest "$wheels" "$@" || return 1
    "${pip[@]}" install --no-index --find-links "$wheels" "$@" || return 1
  fi
  "$venv/bin/python" -c "$ok"
}
