#!/usr/bin/env bash
# nic-queues.sh: a NIC's receive queues, IRQ affinity, RPS/RFS and UDP hashing for callvault.
# Shows the current state and what it would change; changes nothing without --apply.
# Why each step: docs/tuning.md ("NIC queues, IRQs, RPS and RFS").
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: nic-queues.sh [OPTIONS] DEV

Shows DEV's receive queues, its queue IRQs and their CPU affinity, RPS/RFS settings and which
fields the NIC hashes UDP flows on, then prints the commands that would tune them for callvault.
Nothing is changed unless --apply is given (as root). Changes last until reboot: run the script
from a systemd oneshot unit (see kernel-tuning/README.md) to keep them.

Steps (each skipped when already so, or when the NIC cannot do it):
  1. queues  ethtool -L DEV combined N: one RX queue per CPU in --cpus, up to the NIC's maximum
  2. IRQs    queue i's IRQ to the i-th CPU of --cpus (/proc/irq/N/smp_affinity_list); transmit
             queue IRQs the same way, separately
  3. RPS     with fewer queues than CPUs, spread protocol work over --cpus (rx-*/rps_cpus)
  4. RFS     net.core.rps_sock_flow_entries and rx-*/rps_flow_cnt: each flow processed on the CPU
             of the callvault worker that reads its socket
  5. UDP     ethtool -N DEV rx-flow-hash udp4|udp6 sdfn: hash UDP on ports as well as addresses,
             so the RTP of one SBC (one source address) spreads over every queue

Options:
  --apply             make the changes (default: only print them)
  --cpus LIST         CPUs for queues, IRQs and RPS, e.g. 2-7 or 0,2,4 (default: all online);
                      with CPU isolation, the CPUs callvault's workers run on (isolate-cpus.md)
  --queues N          RX queues to ask for (default: one per CPU of --cpus, capped at the maximum)
  --rps auto|on|off   auto (default): RPS only when queues < CPUs; off writes 0 to rps_cpus
  --rfs on|off        RFS (default on)
  --flow-entries N    net.core.rps_sock_flow_entries (default 32768, Documentation/networking/scaling.rst)
  --no-udp-hash       leave the NIC's UDP hash fields alone
  -h, --help          this help

Examples:
  kernel-tuning/nic-queues.sh eth0                      # show, and print the plan
  sudo kernel-tuning/nic-queues.sh --apply eth0
  sudo kernel-tuning/nic-queues.sh --apply --cpus 2-7 ens1f0

Exit codes: 0 done (or plan printed); 1 a change failed; 2 usage error.
EOF
}

die() {
    echo "nic-queues.sh: $*" >&2
    exit 2
}

apply=0
dev=""
cpus=""
queues=""
rps="auto"
rfs="on"
flow_entries=32768
udp_hash=1

while [ $# -gt 0 ]; do
    case "$1" in
        --apply) apply=1 ;;
        --cpus) [ $# -ge 2 ] || die "--cpus needs a list"; cpus=$2; shift ;;
        --queues) queues=${2:?--queues needs a number}; shift ;;
        --rps) rps=${2:?--rps needs auto, on or off}; shift ;;
        --rfs) rfs=${2:?--rfs needs on or off}; shift ;;
        --flow-entries) flow_entries=${2:?--flow-entries needs a number}; shift ;;
        --no-udp-hash) udp_hash=0 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$dev" ] || die "one interface at a time (got $dev and $1)"; dev=$1 ;;
    esac
    shift
done

[ -n "$dev" ] || { usage >&2; die "name the interface, e.g. eth0"; }
[ -d "/sys/class/net/$dev" ] || die "no interface $dev (see ip -br link)"
[[ $rps =~ ^(auto|on|off)$ ]] || die "--rps takes auto, on or off"
[[ $rfs =~ ^(on|off)$ ]] || die "--rfs takes on or off"
[[ $flow_entries =~ ^[0-9]+$ ]] || die "--flow-entries takes a number"
[ -z "$queues" ] || [[ $queues =~ ^[1-9][0-9]*$ ]] || die "--queues takes a number above 0"
if [ "$apply" = 1 ] && [ "$(id -u)" != 0 ]; then
    die "--apply needs root"
fi

# "0-3,6" -> one CPU number per line.
expand_cpus() {
    local part
    local -a parts
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
            seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
        elif [[ $part =~ ^[0-9]+$ ]]; then
            echo "$part"
        else
            die "not a CPU list: $1"
        fi
    done
}

# CPU numbers -> the hex mask rps_cpus takes (32-bit words, comma-separated, highest first).
cpus_mask() {
    local c w words=0 out=""
    local -a word=()
    for c in "$@"; do
        if [ $((c / 32 + 1)) -gt "$words" ]; then words=$((c / 32 + 1)); fi
    done
    for ((w = 0; w < words; w++)); do word[w]=0; done
    for c in "$@"; do word[c / 32]=$((word[c / 32] | (1 << (c % 32)))); done
    for ((w = words - 1; w >= 0; w--)); do
        out+=$(printf '%08x' "${word[w]}")
        if [ "$w" -gt 0 ]; then out+=","; fi
    done
    echo "$out"
}

have_ethtool=0
if command -v ethtool >/dev/null 2>&1; then have_ethtool=1; fi

online=$(cat /sys/devices/system/cpu/online)
# Not `< <(...)`: die inside a process substitution would not stop this script.
cpu_text=$(expand_cpus "${cpus:-$online}") || exit 2
mapfile -t cpu_list <<<"$cpu_text"
ncpus=${#cpu_list[@]}
[ "$ncpus" -gt 0 ] || die "no CPUs in --cpus"
for c in "${cpu_list[@]}"; do
    [ -d "/sys/devices/system/cpu/cpu$c" ] || die "CPU $c does not exist (online: $online)"
done

rx_queues() { find "/sys/class/net/$dev/queues" -maxdepth 1 -name 'rx-*' | sort -V; }

# The device's queue IRQs: its MSI vectors (the PCI function's, for virtio) or, failing that,
# /proc/interrupts lines naming it; control/config/async vectors are left alone.
queue_irqs() {
    local d irq name found=0
    for d in "/sys/class/net/$dev/device/msi_irqs" "/sys/class/net/$dev/device/../msi_irqs"; do
        [ -d "$d" ] || continue
        for irq in $(find "$d" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n); do
            name=$(awk -v irq="$irq:" '$1 == irq { print $NF }' /proc/interrupts)
            [[ $name =~ config|async|ctrl|cmd|mbox|misc ]] && continue
            echo "$irq $name"
            found=1
        done
        [ "$found" = 1 ] && return 0
    done
    awk -v dev="$dev" '$NF ~ dev { sub(":", "", $1); print $1, $NF }' /proc/interrupts
}

changes=0
failed=0
# Prints a change; runs it with --apply.
step() {
    changes=$((changes + 1))
    local shown="$*"
    if [ "$1" = write_to ]; then shown="echo $2 > $3"; fi
    if [ "$apply" = 1 ]; then
        echo "  running: $shown"
        if ! "$@"; then
            echo "  FAILED: $shown" >&2
            failed=1
        fi
    else
        echo "  would run: $shown"
    fi
}
write_to() { # write_to VALUE FILE
    echo "$1" >"$2"
}

echo "== $dev: current state"
driver=$(basename "$(readlink -f "/sys/class/net/$dev/device/driver" 2>/dev/null || echo none)")
echo "driver: $driver; CPUs for RTP: ${cpu_list[*]} (online: $online)"
mapfile -t rxq < <(rx_queues)
echo "rx queues: ${#rxq[@]}"
max_combined="" cur_combined="" max_rx="" cur_rx=""
if [ "$have_ethtool" = 1 ] && channels=$(ethtool -l "$dev" 2>/dev/null); then
    max_combined=$(awk '/^Pre-set/ {s=1} /^Current/ {s=2} s==1 && /^Combined:/ {print $2}' <<<"$channels")
    cur_combined=$(awk '/^Current/ {s=2} s==2 && /^Combined:/ {print $2}' <<<"$channels")
    max_rx=$(awk '/^Pre-set/ {s=1} /^Current/ {s=2} s==1 && /^RX:/ {print $2}' <<<"$channels")
    cur_rx=$(awk '/^Current/ {s=2} s==2 && /^RX:/ {print $2}' <<<"$channels")
    echo "ethtool -l: combined $cur_combined of max $max_combined; rx $cur_rx of max $max_rx"
elif [ "$have_ethtool" = 0 ]; then
    echo "ethtool not installed (apt-get install ethtool): queue count and UDP hashing not shown"
else
    echo "ethtool -l: not supported by $driver"
fi
echo "queue IRQs (irq name: CPUs):"
mapfile -t irqs < <(queue_irqs)
if [ "${#irqs[@]}" = 0 ]; then echo "  none found"; fi
for line in "${irqs[@]}"; do
    irq=${line%% *}
    echo "  $line: $(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo '?')"
done
irqbalance=0
if pgrep -x irqbalance >/dev/null 2>&1; then irqbalance=1; fi
echo "irqbalance: $([ "$irqbalance" = 1 ] && echo running || echo 'not running')"
for q in "${rxq[@]}"; do
    echo "$(basename "$q"): rps_cpus $(cat "$q/rps_cpus" 2>/dev/null || echo '?'), rps_flow_cnt $(cat "$q/rps_flow_cnt" 2>/dev/null || echo '?')"
done
sock_flow=$(cat /proc/sys/net/core/rps_sock_flow_entries 2>/dev/null || echo 0)
echo "net.core.rps_sock_flow_entries: $sock_flow"
declare -A udp_fields=()
if [ "$have_ethtool" = 1 ]; then
    for proto in udp4 udp6; do
        fields=$(ethtool -n "$dev" rx-flow-hash "$proto" 2>/dev/null | tail -n +2 | paste -sd, - || true)
        udp_fields[$proto]=${fields:-unsupported}
        echo "UDP hash ($proto): ${udp_fields[$proto]}"
    done
fi

echo
if [ "$apply" = 1 ]; then echo "== changes"; else echo "== plan (dry run: nothing is changed; rerun with --apply)"; fi

# 1. queues
target_q=${#rxq[@]}
if [ "$have_ethtool" = 1 ]; then
    kind="" max="" cur=""
    if [[ $max_combined =~ ^[0-9]+$ ]] && [ "$max_combined" -gt 0 ]; then
        kind=combined max=$max_combined cur=$cur_combined
    elif [[ $max_rx =~ ^[0-9]+$ ]] && [ "$max_rx" -gt 0 ]; then
        kind=rx max=$max_rx cur=$cur_rx
    fi
    if [ -n "$kind" ]; then
        want=${queues:-$ncpus}
        if [ "$want" -gt "$max" ]; then want=$max; fi
        if [ "$want" != "$cur" ]; then
            step ethtool -L "$dev" "$kind" "$want"
            target_q=$want
        else
            echo "  queues: $cur $kind already (max $max)"
        fi
    else
        echo "  queues: the driver ($driver) reports no settable channel count; left as is"
    fi
fi

# 2. IRQ affinity
if [ "$apply" = 1 ] && [ "$target_q" != "${#rxq[@]}" ]; then
    mapfile -t irqs < <(queue_irqs) # the queue change made new vectors
elif [ "$target_q" != "${#rxq[@]}" ]; then
    echo "  (after the queue change the IRQs are listed again and spread the same way)"
fi
# Receive (or combined) vectors and transmit-only ones are each spread from the first CPU on.
rx_i=0 tx_i=0
for line in "${irqs[@]}"; do
    irq=${line%% *}
    if [[ ${line#* } =~ output|[-_]tx[-_.]?[0-9] ]]; then
        cpu=${cpu_list[tx_i % ncpus]}
        tx_i=$((tx_i + 1))
    else
        cpu=${cpu_list[rx_i % ncpus]}
        rx_i=$((rx_i + 1))
    fi
    cur=$(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo '?')
    if [ "$cur" != "$cpu" ]; then step write_to "$cpu" "/proc/irq/$irq/smp_affinity_list"; fi
done
if [ "$irqbalance" = 1 ] && [ "${#irqs[@]}" -gt 0 ]; then
    echo "  note: irqbalance is running and will move these IRQs again; stop it (systemctl disable --now"
    echo "        irqbalance) or keep it off these CPUs (IRQBALANCE_BANNED_CPULIST in /etc/default/irqbalance)"
fi

# 3. RPS
mapfile -t rxq < <(rx_queues)
mask=$(cpus_mask "${cpu_list[@]}")
rps_on=0
case "$rps" in
    on) rps_on=1 ;;
    auto) if [ "${#rxq[@]}" -lt "$ncpus" ]; then rps_on=1; fi ;;
esac
for q in "${rxq[@]}"; do
    cur=$(cat "$q/rps_cpus" 2>/dev/null || echo '?')
    if [ "$rps_on" = 1 ]; then
        # Compare as numbers: /sys pads the mask to the machine's CPU count.
        if [ "$(tr -d ',' <<<"$cur" | sed 's/^0*//')" != "$(tr -d ',' <<<"$mask" | sed 's/^0*//')" ]; then
            step write_to "$mask" "$q/rps_cpus"
        fi
    elif [ "$rps" = off ] && [ -n "$(tr -d ',0' <<<"$cur")" ]; then
        step write_to 0 "$q/rps_cpus"
    fi
done
if [ "$rps" = auto ] && [ "$rps_on" = 0 ]; then
    echo "  RPS: ${#rxq[@]} queues for $ncpus CPUs: RSS spreads the flows, RPS not needed"
fi

# 4. RFS
if [ "$rfs" = on ] && [ "${#rxq[@]}" -gt 0 ]; then
    if [ "$sock_flow" -lt "$flow_entries" ]; then
        step sysctl -w "net.core.rps_sock_flow_entries=$flow_entries"
    fi
    per_queue=$((flow_entries / ${#rxq[@]}))
    for q in "${rxq[@]}"; do
        cur=$(cat "$q/rps_flow_cnt" 2>/dev/null || echo 0)
        if [ "$cur" != "$per_queue" ]; then step write_to "$per_queue" "$q/rps_flow_cnt"; fi
    done
fi

# 5. UDP hash fields
if [ "$udp_hash" = 1 ] && [ "$have_ethtool" = 1 ]; then
    for proto in udp4 udp6; do
        f=${udp_fields[$proto]:-unsupported}
        if [[ $f == *"L4 bytes 0 & 1"* ]]; then
            echo "  UDP hash ($proto): ports already hashed"
        elif [[ $f == *"IP SA"* ]]; then
            step ethtool -N "$dev" rx-flow-hash "$proto" sdfn
        else
            echo "  UDP hash ($proto): the driver ($driver) does not report its hash fields; left as is"
        fi
    done
fi

echo
if [ "$changes" = 0 ]; then
    echo "nothing to change"
elif [ "$apply" = 0 ]; then
    echo "$changes change(s) planned; nothing was changed (rerun with --apply as root)"
elif [ "$failed" = 1 ]; then
    echo "some changes failed (above)" >&2
    exit 1
else
    echo "$changes change(s) made; they last until reboot"
fi
