#!/usr/bin/env bash
# bin/neo4j and bin/neo4j-admin of the local neo4j image (mlinfra.devenv.images; docs/images.md).
#
# The image holds Neo4j's jars from Maven Central, not its distribution tarball (which no registry reachable
# here serves), so these launchers are ours. They start what the distribution's bin/neo4j and bin/neo4j-admin
# start: Neo4j's bootloader (org.neo4j.server.startup.Neo4jCommand, Neo4jAdminCommand) with lib/ as its
# classpath and a small heap. The bootloader reads neo4j.conf ($NEO4J_CONF, else $NEO4J_HOME/conf) and runs
# the server (org.neo4j.server.CommunityEntryPoint) or the admin tool (org.neo4j.cli.AdminTool) in a JVM of
# its own with the settings' heap and server.jvm.additional flags; `neo4j console` keeps it in the
# foreground and passes signals on. Java: $JAVA_HOME/bin/java, else java on PATH.
set -eu
NEO4J_HOME="${NEO4J_HOME:-$(cd "$(dirname "$0")/.." && pwd -P)}"
export NEO4J_HOME
case "$(basename "$0")" in
  neo4j) main=org.neo4j.server.startup.Neo4jCommand ;;
  neo4j-admin) main=org.neo4j.server.startup.Neo4jAdminCommand ;;
  *) echo "$0: run me as neo4j or neo4j-admin" >&2; exit 2 ;;
esac
java="java"
if [ -n "${JAVA_HOME:-}" ]; then
  java="${JAVA_HOME}/bin/java"
fi
exec "$java" -Xmx128m -cp "${NEO4J_HOME}/lib/*" -Dbasedir="${NEO4J_HOME}" -Dfile.encoding=UTF-8 "$main" "$@"
