#!/bin/sh
# Entry point of secgroup-postgres (docker/postgres-image.sh): a PostgreSQL
# server for the system tests and docker/compose.yaml, on the container's
# own network only.
#
# First start (PGDATA empty): initdb as the postgres user, then allow
# connections from the container's networks (pg_hba `host all all` for
# 0.0.0.0/0 and ::/0: the networks are --internal ones from the test ranges),
# with scram-sha-256 when POSTGRES_PASSWORD is set (it becomes the password of
# POSTGRES_USER), else trust; create POSTGRES_DB owned by POSTGRES_USER.
# Every start: exec postgres in the foreground (PID 1, so `docker stop`'s
# SIGTERM is a "smart" shutdown and `docker kill` a crash), listening on all
# of the container's addresses, port 5432.
#
# Environment: PGDATA (default /var/lib/postgresql/data), POSTGRES_USER
# (default secgroup), POSTGRES_DB (default secgroup), POSTGRES_PASSWORD.
set -eu

bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
data=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-secgroup}
db=${POSTGRES_DB:-secgroup}
say() { echo "postgres-entry: $*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }

mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 0700 "$data"

if [ ! -s "$data/PG_VERSION" ]; then
  say "initdb into $data"
  auth=trust
  [ -n "${POSTGRES_PASSWORD:-}" ] && auth=scram-sha-256
  as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=peer --auth-host="$auth" --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  printf 'host all all 0.0.0.0/0 %s\nhost all all ::/0 %s\n' "$auth" "$auth" >>"$data/pg_hba.conf"
  # a local-only server for the setup statements
  as_pg "$bin/pg_ctl" -D "$data" -w -o "-c listen_addresses='' -c unix_socket_directories=/run/postgresql" start >/dev/null
  # psql reads the statement from stdin (variables are not interpolated in -c);
  # the password comes from the environment (\getenv), never a command line
  password=''
  [ -n "${POSTGRES_PASSWORD:-}" ] && password=" PASSWORD :'p'"
  printf '%s\n' '\getenv p POSTGRES_PASSWORD' "CREATE ROLE :\"u\" LOGIN$password;" |
    as_pg "$bin/psql" -h /run/postgresql -U postgres -v ON_ERROR_STOP=1 -q -v u="$user" postgres
  as_pg "$bin/createdb" -h /run/postgresql -U postgres -O "$user" "$db"
  as_pg "$bin/pg_ctl" -D "$data" -w -m fast stop >/dev/null
  say "created role $user and database $db ($auth)"
fi

# setpriv execs (runuser would stay as the parent): postgres itself is PID 1
exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/postgres" -D "$data" \
  -c listen_addresses='*' -c port=5432 -c unix_socket_directories=/run/postgresql \
  -c max_connections="${POSTGRES_MAX_CONNECTIONS:-200}"
