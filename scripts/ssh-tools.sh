#!/usr/bin/env bash
# Sourced by scripts/test.sh: Debian's OpenSSH server and client, for the
# launcher's ssh-provider test (integration-tests/tests/it/launcher.rs),
# which serves hosts that are network namespaces on this machine. Run as
# root (network namespaces need it), the test is then required to run.
if ! [ -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v scp >/dev/null; then
  echo "== installing Debian packages: openssh-server openssh-client"
  _sudo=""
  [ "$(id -u)" -eq 0 ] || _sudo="sudo"
  $_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
  unset _sudo
fi
if [ "$(id -u)" -eq 0 ]; then
  export RAYFORGE_REQUIRE_SSHD=1
fi
