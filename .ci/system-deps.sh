#!/usr/bin/env bash
# Debian packages certctl needs, installed with apt-get only when something is missing.
#   .ci/system-deps.sh venv   what `make run` needs: a Python that can create a virtualenv
#   .ci/system-deps.sh test   plus what the tests use: openssl, curl, sqlite3, SoftHSM2 (PKCS#11 signer tests),
#                             PostgreSQL (server and client), nginx, apache2, haproxy, caddy, a JRE (keytool) and
#                             openssh-server (deployment tests),
#                             and a PostgreSQL the tests reach as postgres@127.0.0.1 without a password
# A tool that is still missing afterwards is an error: the tests never skip for want of one.
set -euo pipefail

mode="${1:-test}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "system-deps: installing ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

python="${PYTHON:-python3}"
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    command -v apt-get >/dev/null || { echo "system-deps: $python cannot create a virtualenv (no ensurepip)"; exit 1; }
    apt_install python3-venv
fi
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || { echo "system-deps: certctl needs Python 3.11 or newer"; exit 1; }
[ "$mode" = "venv" ] && exit 0

if command -v apt-get >/dev/null; then
    apt_install openssl curl ca-certificates sqlite3 postgresql postgresql-client softhsm2
    # Deployment tests start real TLS servers (private configs, 127.0.0.1 high ports, never the services).
    apt_install nginx apache2 haproxy caddy procps
    # deploy/systemd units are checked with `systemd-analyze verify`; the disk-full test mounts a tmpfs in a
    # mount namespace of its own (unshare, nsenter from util-linux).
    apt_install systemd util-linux
    # JavaKeystore target tests run the JRE's keytool; SSH target tests start a private sshd as the current user.
    apt_install openjdk-17-jre-headless openssh-server
    # ACME tests: certbot against our server, our ACME issuer against pebble (and its DNS test server).
    apt_install certbot pebble
fi
for tool in openssl curl sqlite3 psql pg_dump pg_restore softhsm2-util nginx apache2 haproxy caddy kill keytool certbot pebble pebble-challtestsrv; do
    command -v "$tool" >/dev/null || { echo "system-deps: '$tool' is required by the tests and is missing"; exit 1; }
done

for tool in systemd-analyze unshare nsenter; do
    command -v "$tool" >/dev/null || { echo "system-deps: '$tool' is required by the tests and is missing"; exit 1; }
done

# sshd lives in /usr/sbin, which a non-root PATH may lack.
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || { echo "system-deps: 'sshd' is required by the tests and is missing"; exit 1; }

pg_url="${CERTCTL_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
pg_ok() { psql "$pg_url" -Atqc 'SELECT 1' >/dev/null 2>&1; }
if ! pg_ok && command -v pg_lsclusters >/dev/null; then
    if [ -z "$(pg_lsclusters -h)" ]; then
        version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
        $sudo pg_createcluster "$version" main
    fi
    pg_lsclusters -h | while read -r version cluster _port status _rest; do
        if [ "$status" != "online" ]; then $sudo pg_ctlcluster "$version" "$cluster" start; fi
    done
    for _ in $(seq 1 30); do pg_ok && break; sleep 1; done
    if ! pg_ok && [ -z "${CERTCTL_TEST_PG_URL:-}" ]; then
        # A fresh Debian cluster wants a password over TCP. The tests log in as postgres from loopback only,
        # so let that one user in from 127.0.0.1 without one (this machine is a test machine).
        pg_lsclusters -h | while read -r version cluster _rest; do
            hba="/etc/postgresql/$version/$cluster/pg_hba.conf"
            if ! $sudo grep -q "certctl tests" "$hba"; then
                echo "system-deps: allowing postgres@127.0.0.1 without a password in $hba"
                $sudo sed -i "1i host all postgres 127.0.0.1/32 trust  # certctl tests" "$hba"
                $sudo pg_ctlcluster "$version" "$cluster" reload
            fi
        done
        for _ in $(seq 1 10); do pg_ok && break; sleep 1; done
    fi
fi
pg_ok || { echo "system-deps: cannot reach PostgreSQL at $pg_url (set CERTCTL_TEST_PG_URL)"; exit 1; }
echo "system-deps: ok (openssl, curl, psql, PostgreSQL at ${pg_url%%@*}@…)"
