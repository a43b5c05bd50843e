//! A backend that runs docs/proxy-protocol.md's Python reader of PROXY v2 headers (the very code in docs/proxy-protocol.md,
//! so the documented parser is the one tested), for `tests/proxy.rs` and the vsock guest.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use super::Scratch;

/// docs/proxy-protocol.md's Python reader of PROXY v2 headers, as a backend on `port`: prints `ready`, then
/// for one connection a JSON line with the header it read and the bytes that followed.
pub fn spawn(port: u16, dir: &Scratch) -> (Child, BufReader<ChildStdout>) {
    let readme = include_str!("../../docs/proxy-protocol.md");
    let start = readme
        .find("```python\nimport socket, struct")
        .expect("docs/proxy-protocol.md has the PROXY v2 reader");
    let code = &readme[start + "```python\n".len()..];
    let code = &code[..code.find("```").expect("end of the reader")];
    let script = format!(
        "{code}\nimport json\nl = socket.socket()\nl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('127.0.0.1', {port}))\nl.listen(4)\nprint('ready', flush=True)\nc, _ = l.accept()\n\
         h = read_proxy_v2(c)\nrest = b''\nwhile True:\n    b = c.recv(65536)\n    if not b:\n        break\n    rest += b\n\
         print(json.dumps({{'header': h, 'rest': rest.decode()}}), flush=True)\n"
    );
    let path = dir.path("backend.py");
    std::fs::write(&path, script).unwrap();
    let mut child = Command::new("python3")
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, out)
}
