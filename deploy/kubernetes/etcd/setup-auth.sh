#!/bin/sh
# Sets up etcd's users and roles for workersd as docs/ETCD.md describes,
# then turns authentication on. Run again at will: what exists is kept
# (a password too: change one with etcdctl user passwd).
#
#   ETCD_ENDPOINTS   the members, comma-separated
#   WORKERSD_PREFIX  the registrations' prefix, /workersd/v1/ by default
#   WORKERSD_APPS    space-separated user=job/pod-prefix: the user an
#                    application's agents log in as may write the keys of
#                    its job whose host (the pod's name) starts with
#                    pod-prefix, e.g. example-gunicorn=gunicorn-demo/example-gunicorn-
#   PASSWORDS        directory of one file per user (root, sdwriter, and
#                    each user of WORKERSD_APPS) holding its password
set -eu
P=${WORKERSD_PREFIX:-/workersd/v1/}
H="${P%/}.hold/"

ctl() {
	# root's credentials from the start: etcd ignores them until
	# authentication is on, and needs them after, so a second run works.
	etcdctl --endpoints="$ETCD_ENDPOINTS" --user="root:$(cat "$PASSWORDS/root")" "$@"
}

user() { # name
	ctl user get "$1" >/dev/null 2>&1 || ctl user add "$1" --new-user-password="$(cat "$PASSWORDS/$1")" >/dev/null
}

role() { # name
	ctl role get "$1" >/dev/null 2>&1 || ctl role add "$1" >/dev/null
}

user root
ctl user grant-role root root >/dev/null

role workersd-reader
ctl role grant-permission workersd-reader --prefix=true read "$P" >/dev/null
user sdwriter
ctl user grant-role sdwriter workersd-reader >/dev/null

for app in ${WORKERSD_APPS:-}; do
	name=${app%%=*}
	scope=${app#*=}
	case $scope in
	*/?*) ;;
	*) echo "setup-auth: WORKERSD_APPS: $app is not user=job/pod-prefix" >&2; exit 2 ;;
	esac
	role "workersd-app-$name"
	ctl role grant-permission "workersd-app-$name" --prefix=true read "$P" >/dev/null
	ctl role grant-permission "workersd-app-$name" --prefix=true readwrite "$P$scope" >/dev/null
	ctl role grant-permission "workersd-app-$name" --prefix=true readwrite "$H$scope" >/dev/null
	user "$name"
	ctl user grant-role "$name" "workersd-app-$name" >/dev/null
	echo "setup-auth: $name may register $P$scope*"
done

ctl auth enable >/dev/null
echo "setup-auth: authentication is on"
