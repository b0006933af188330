#!/bin/sh
# udhcpc event script of the vnet test guest (busybox ships none).
# Applies the lease to $interface and prints one parseable line:
#   LEASE ip=.. mask=.. router=a[,b] dns=a[,b] domain=.. mtu=.. hostname=.. search=.. serverid=.. lease=..
# (empty values when the server did not send the option; mtu and search are
# only sent back if requested, e.g. `udhcpc -O mtu -O search`).
# The same line is kept in /run/lease.

join() { echo "$*" | tr ' ' ','; }

case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound | renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if [ -n "$router" ]; then
        for r in $router; do
            ip route replace default via "$r" dev "$interface" && break
        done
    fi
    {
        [ -n "$search" ] && echo "search $search"
        [ -z "$search" ] && [ -n "$domain" ] && echo "search $domain"
        for d in $dns; do echo "nameserver $d"; done
    } >/etc/resolv.conf
    line="LEASE ip=$ip mask=$mask router=$(join $router) dns=$(join $dns) domain=$domain mtu=$mtu hostname=$hostname search=$(join $search) serverid=$serverid lease=$lease"
    echo "$line" >/run/lease
    echo "$line"
    ;;
leasefail | nak)
    echo "DHCP $1 $message"
    ;;
esac
exit 0
