# Sourced by scripts/libtorch.sh and scripts/gym-venv.sh: rayforge_cache_dir
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
