"""A real Neo4j 5.26 Community server: embedded, Bolt on a free loopback port (e2e/tools/neo4j)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import neo4j

from mlinfra.devenv import procs, secretscan, tools

JVM_FLAGS = [
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "-Xmx512m",
    "-XX:+UseSerialGC",  # two cores shared with everything else: no parallel GC threads
]


@dataclass
class Neo4jServer:
    workdir: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=procs.free_port)
    user: str = "neo4j"
    proc: procs.Proc | None = None

    def __post_init__(self) -> None:
        secretscan.track(self.password)

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    def driver(self) -> neo4j.Driver:
        return neo4j.GraphDatabase.driver(self.uri, auth=(self.user, self.password))

    def start(self, stack: procs.ProcStack, classpath: str | None = None) -> Neo4jServer:
        cp = classpath or tools.ensure_tools().neo4j_classpath
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = stack.add(
            procs.Proc(
                "neo4j",
                [
                    "java",
                    *JVM_FLAGS,
                    "-cp",
                    cp,
                    "io.mlinfra.e2e.Neo4jServer",
                    str(self.workdir / "home"),
                    str(self.port),
                ],
                self.workdir / "neo4j.log",
                env={"NEO4J_PASSWORD": self.password},
            )
        )
        log_path = self.proc.log_path
        procs.wait_until("neo4j to announce READY", lambda: "READY bolt://" in log_path.read_text(), 180, self.proc)
        return self
