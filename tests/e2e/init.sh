#!/bin/busybox sh
# /init of the e2e guest's initramfs (busybox only; built by tests/e2e/guest.py).
#
# Loads the modules listed in /modules/load.list (virtio, 9p, overlay, videodev, then our
# v4l2loopback with the options of systemd/v4l2loopback.conf), makes the host's root file
# system (9p, read-only) writable with a tmpfs overlay, mounts the test's shared folder at
# /e2e and copies /e2e/root/ over the new root. Then, by the kernel argument thc.mode=:
#   script   run /e2e/job in a chroot (output: /e2e/job.log, exit status: /e2e/job.rc)
#   systemd  boot the host's systemd as PID 1 (the job is a unit; see e2e.target)
# and power off. Anything that goes wrong is printed on the console (the host keeps it).

/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "e2e-init: $* (at $(cut -d' ' -f1 /proc/uptime) s)"; }
die() { say "FAILED: $*"; poweroff -f; }

arg() {  # the value of kernel argument $1=
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) echo "${word#*=}"; return ;; esac
    done
}

load_modules() {
    while read -r file options; do
        eval "insmod /modules/$file $options" || die "insmod $file"
    done < /modules/load.list
}

mount_root() {
    p9="trans=virtio,version=9p2000.L,msize=512000"
    mkdir -p /lower /rw /newroot
    mount -t 9p -o "$p9,ro,cache=loose" hostroot /lower || die "9p mount of the host root"
    mount -t tmpfs -o mode=0755 tmpfs /rw
    mkdir -p /rw/upper /rw/work
    mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
        || die "overlay root"
    # systemd takes a /.dockerenv for a container and then ignores systemd.unit= on the cmdline
    rm -f /newroot/.dockerenv
    mkdir -p /newroot/e2e
    mount -t 9p -o "$p9" e2e /newroot/e2e || die "9p mount of the shared folder"
    if [ -d /newroot/e2e/root ]; then cp -a /newroot/e2e/root/. /newroot/; fi
}

run_script() {
    mount --bind /proc /newroot/proc
    mount --bind /sys /newroot/sys
    mount --bind /dev /newroot/dev
    mkdir -p /newroot/dev/pts /newroot/dev/shm
    mount -t devpts devpts /newroot/dev/pts
    mount -t tmpfs tmpfs /newroot/dev/shm
    mount -t tmpfs tmpfs /newroot/run
    ip link set lo up
    say "running /e2e/job"
    chroot /newroot /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        HOME=/root TMPDIR=/tmp LANG=C.UTF-8 /bin/sh /e2e/job > /newroot/e2e/job.log 2>&1
    echo $? > /newroot/e2e/job.rc
    say "job exited with $(cat /newroot/e2e/job.rc)"
    sync
    umount /newroot/e2e
    poweroff -f
}

boot_systemd() {
    # Units that cannot work or do not matter here; systemd-tmpfiles-setup hangs on a 9p root.
    for unit in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
        systemd-tmpfiles-clean.timer systemd-timesyncd.service systemd-pstore.service \
        apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
        e2scrub_reap.service fstrim.timer dpkg-db-backup.timer; do
        ln -sf /dev/null "/newroot/etc/systemd/system/$unit"
    done
    say "switching to systemd"
    umount /proc /sys
    mount --move /dev /newroot/dev
    exec switch_root /newroot /lib/systemd/systemd
}

say "kernel $(uname -r)"
load_modules
say "modules loaded"
mount_root
case "$(arg thc.mode)" in
    script) run_script ;;
    systemd) boot_systemd ;;
    *) die "unknown thc.mode= (script or systemd)" ;;
esac
