"""A loopback HTTP front for chdb: enough of ClickHouse's HTTP interface for the sink's tests.

chdb (PyPI `chdb-core`) runs the ClickHouse engine of its release in-process, so the SQL, the
table engines and the settings are the real server's; only the HTTP handling here is not.
What this front does, and what it leaves out:

- `GET /ping` answers `Ok.`.
- `GET`/`POST /` runs the statement in the `query` URL parameter, or in the body, or (as the
  server does) their concatenation.
  An `INSERT … FORMAT <fmt>` in `query` takes its rows from the body, unchanged: the rows go
  to the engine as the inline data of the statement, the server's own input path.
- `database` runs the statement in that database (`USE`); `default_format` is the output
  format when the statement names none (else `TabSeparated`, as on the server).
- Every other URL parameter is a setting, applied with `SET` for this one statement and reset
  with `SET … = DEFAULT` after it; an unknown setting fails as on the server (code 115).
  Parameters of the HTTP layer itself (`query_id`, `wait_end_of_query`, `session_id`, …) are
  accepted and ignored: statements run one at a time and the whole result is sent at once,
  which is what `wait_end_of_query=1` asks for.
  A `query_id` is not known to `system.processes`: a statement has finished when its answer
  is sent.
- Errors are status 500 with `X-ClickHouse-Exception-Code` and the engine's own text,
  `Code: N. DB::Exception: …`.
- Not supported: compression (`compress`/`decompress`/`enable_http_compression` fail with
  code 1), query parameters (`param_*`), sessions, users and passwords (every request runs as
  the one embedded user), progress headers, and multiple statements per request.

Run: `python chdb_http.py DATA_DIR`. It binds 127.0.0.1 on a free port, prints
`ready port=N version=V` on stdout, logs one line per statement on stderr (with the settings
applied to it, so a test can check what the client sent), and exits when its stdin closes
(the test that started it is gone).
"""

import http.server
import os
import re
import sys
import threading
import urllib.parse

import chdb
import chdb.session

# HTTP-layer parameters, not settings: handled here or ignored.
HTTP_PARAMETERS = {
    "query",
    "database",
    "default_format",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "wait_end_of_query",
    "buffer_size",
    "user",
    "password",
    "quota_key",
    "role",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
}

UNSUPPORTED_PARAMETERS = {"compress", "decompress", "enable_http_compression"}

FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)
INSERT_STATEMENT = re.compile(r"^\s*INSERT\b", re.IGNORECASE)
ERROR_CODE = re.compile(r"Code: (\d+)")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class ShimError(Exception):
    """A request this front refuses, with the ClickHouse code it answers."""

    def __init__(self, code, text):
        super().__init__(f"Code: {code}. DB::Exception: {text}. (chdb HTTP front)")
        self.code = code


def sql_literal(value):
    """A setting's value as SQL: numbers as they are, anything else as a quoted string."""
    if NUMBER.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def setting_name(name):
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ShimError(115, f"Unknown setting '{name}'")
    return name


class Engine:
    """The one chdb session; statements run one at a time (chdb sessions are not shared)."""

    def __init__(self, data_dir):
        self.session = chdb.session.Session(data_dir)
        self.lock = threading.Lock()
        self.version = self.run_locked("SELECT version()", "TabSeparated").strip().decode()

    def run_locked(self, statement, output_format):
        result = self.session.query(statement, output_format)
        return result.bytes()

    def execute(self, statement, data, database, output_format, settings):
        """Runs one statement with `settings`; returns the output bytes."""
        with self.lock:
            self.run_locked(f"USE `{database}`" if database else "USE default", "TabSeparated")
            applied = []
            try:
                for name, value in settings:
                    self.run_locked(f"SET {setting_name(name)} = {sql_literal(value)}", "TabSeparated")
                    applied.append(name)
                if data is None:
                    return self.run_locked(statement, output_format)
                # Inline data after the statement: bytes, so binary rows pass through unchanged.
                return self.run_locked(statement.encode() + b"\n" + data, output_format)
            finally:
                for name in applied:
                    self.run_locked(f"SET {name} = DEFAULT", "TabSeparated")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine = None

    def do_GET(self):
        self.handle_query(b"")

    def do_POST(self):
        self.handle_query(self.read_body())

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def handle_query(self, body):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/ping":
            self.answer(200, b"Ok.\n")
            return
        if url.path not in ("/", ""):
            self.answer(404, b"Code: 1. DB::Exception: only / and /ping are served. (chdb HTTP front)\n")
            return
        parameters = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        named = dict(parameters)
        try:
            for name in UNSUPPORTED_PARAMETERS:
                if named.get(name, "0") not in ("", "0"):
                    raise ShimError(1, f"the chdb HTTP front does not support '{name}'")
            for name, _ in parameters:
                if name.startswith("param_"):
                    raise ShimError(1, "the chdb HTTP front does not support query parameters")
            statement, data = split_statement(named.get("query"), body)
            output_format = named.get("default_format") or "TabSeparated"
            if FORMAT_CLAUSE.search(statement) and data is None:
                # The statement's own FORMAT wins over default_format.
                output_format = FORMAT_CLAUSE.search(statement).group(0).split()[1].rstrip(";")
                statement = FORMAT_CLAUSE.sub("", statement)
            settings = [
                (name, value)
                for name, value in parameters
                if name not in HTTP_PARAMETERS and name not in UNSUPPORTED_PARAMETERS
            ]
            output = self.engine.execute(
                statement, data, named.get("database"), output_format, settings
            )
        except Exception as error:  # chdb raises its own error type with the engine's text
            text = str(error).strip()
            match = ERROR_CODE.search(text)
            code = match.group(1) if match else "1001"
            if not match:
                text = f"Code: 1001. DB::Exception: {text}"
            log(f"error {code}: {summary(named.get('query') or body)}: {text[:300]}")
            self.answer(
                500,
                (text + f" (version {self.engine.version})\n").encode(),
                {"X-ClickHouse-Exception-Code": code},
            )
            return
        applied = ",".join(f"{name}={value}" for name, value in settings)
        log(f"ok {len(output)} bytes [{applied}]: {summary(statement)}")
        self.answer(200, output, {"X-ClickHouse-Format": output_format})

    def answer(self, status, payload, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        # One line per statement is logged by handle_query; the access log adds nothing.
        pass


def split_statement(query, body):
    """(statement, inline data): an INSERT in `query` takes the body as its rows."""
    if query is None:
        return body.decode(), None
    if body and INSERT_STATEMENT.match(query):
        return query, body
    if body:
        return query + "\n" + body.decode(), None
    return query, None


def summary(statement):
    if isinstance(statement, bytes):
        statement = statement[:200].decode(errors="replace")
    return " ".join(statement.split())[:200]


def log(line):
    print(line, file=sys.stderr, flush=True)


def exit_when_stdin_closes():
    sys.stdin.buffer.read()
    os._exit(0)


def main():
    data_dir = sys.argv[1]
    Handler.engine = Engine(data_dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(f"ready port={server.server_address[1]} version={Handler.engine.version}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
