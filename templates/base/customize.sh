#!/bin/sh
# Runs as root inside the freshly made root (chroot) at the end of the base build.
# Makes it what E2B's base image is to the SDKs: user `user` (uid 1000, home /home/user,
# passwordless sudo), pip usable as on E2B, the files the agent expects in /etc.
set -eu

# E2B's base image lets `pip install` write the system site-packages (the SDK's
# pipInstall() runs it as root); Debian refuses that by default (PEP 668).
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED

if ! getent passwd user >/dev/null; then
    useradd --uid 1000 --user-group --create-home --home-dir /home/user --shell /bin/bash user
fi
usermod -aG sudo user
passwd -d user >/dev/null
passwd -l root >/dev/null
printf 'user\tALL=(ALL:ALL) NOPASSWD: ALL\n' >/etc/sudoers.d/90-sbx-user
chmod 0440 /etc/sudoers.d/90-sbx-user
# The sandbox user is root-equivalent by design: PAM has nothing to check for sudo.
for f in sudo sudo-i; do
    printf 'auth\trequired\tpam_permit.so\naccount\trequired\tpam_permit.so\nsession\trequired\tpam_permit.so\n' >"/etc/pam.d/$f"
done

# Names: spawn.c writes a sandbox's own hosts and hostname when it is not "sandbox".
echo sandbox >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n' >/etc/hosts
: >/etc/resolv.conf
ln -sf ../proc/self/mounts /etc/mtab
echo 'LANG=C.UTF-8' >/etc/default/locale

# A login shell keeps the PATH it is given (the agent's, or a template's ENV PATH, which
# `bash -l -c` would otherwise lose to Debian's defaults), and gets E2B's when it has none.
cat >/etc/profile.sbx <<'EOP'
if [ -z "${PATH:-}" ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
fi
export PATH
EOP
awk 'BEGIN { skip = 0 }
     /^if \[ "\$\(id -u\)" -eq 0 \]; then$/ && !done { skip = 1; system("cat /etc/profile.sbx"); next }
     skip && /^export PATH$/ { skip = 0; done = 1; next }
     !skip' /etc/profile >/etc/profile.new
grep -q 'profile.d' /etc/profile.new && mv /etc/profile.new /etc/profile
rm -f /etc/profile.sbx /etc/profile.new

# $HOME/.local/bin first for the user, as on E2B.
cat >/etc/profile.d/sbx.sh <<'EOP'
if [ "${EUID:-$(id -u)}" -ne 0 ]; then PATH="$HOME/.local/bin:$PATH"; fi
export LANG="${LANG:-C.UTF-8}"
EOP

# Nothing of the build that sandboxes do not need.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*.log /var/log/apt/* \
    /root/.cache /tmp/* /var/tmp/*
