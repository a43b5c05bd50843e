//! The password a proxy address requires, read from its `password-file=` ([`load_password`]).
//! This is the grammar's one step that reads a file, kept apart from parsing (which stays pure)
//! and run by whoever turns an address into a plan (the command line, `serve`'s config load and
//! each reload), so a missing or empty file fails at start, with exit status 2, never at a
//! client's request; a reload reads the file again.

use super::address::Address;
use super::options::Secret;

/// The longest password RFC 1929 carries.
const MAX_PASSWORD: usize = 255;

/// Reads the first line of a proxy address's `password-file=` into its options (nothing to do
/// for other addresses). The message names the address and the file.
pub fn load_password(address: &mut Address) -> Result<(), String> {
    let Some(path) = address.options.proxy.password_file.clone() else {
        return Ok(());
    };
    let fail = |why: String| {
        format!(
            "\"{}\": password-file \"{}\": {why}",
            address.text,
            path.display()
        )
    };
    let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(fail("the first line (the password) is empty".into()));
    }
    if line.len() > MAX_PASSWORD {
        return Err(fail(format!(
            "the password is {} bytes, more than SOCKS5 carries ({MAX_PASSWORD})",
            line.len()
        )));
    }
    address.options.proxy.password = Some(Secret(line.to_vec()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_of_the_file_is_the_password_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("vsplice-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\r\nignored\n").unwrap();
        let text = format!(
            "SOCKS5-SERVER,dest=a.b:1,user=u,password-file={}",
            file.display()
        );
        let mut a = Address::parse(&text).unwrap();
        load_password(&mut a).unwrap();
        assert_eq!(a.options.proxy.password, Some(Secret(b"s3cret".to_vec())));
        assert!(!format!("{a:?}").contains("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(load_password(&mut a).unwrap_err().contains("empty"));
        std::fs::remove_file(&file).unwrap();
        let err = load_password(&mut a).unwrap_err();
        assert!(err.contains(&file.display().to_string()), "{err}");
        std::fs::remove_dir(&dir).unwrap();
    }
}
