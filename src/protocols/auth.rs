//! The one user name and password a proxy address may require (`user=`, `password-file=`),
//! shared by SOCKS5 (RFC 1929) and HTTP CONNECT (`Proxy-Authorization: Basic`). Comparison
//! looks at every byte whatever matches, so the time it takes does not tell a client how
//! much of a guess was right.

/// A user name and the password read from `password-file=`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"(hidden)")
            .finish()
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

impl Credentials {
    /// Whether a client's user and password are these.
    pub(crate) fn check(&self, user: &[u8], password: &[u8]) -> bool {
        // Both compared, always: `&` not `&&`.
        same(&self.user, user) & same(&self.password, password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_user_and_password_pass() {
        let c = Credentials {
            user: b"alice".to_vec(),
            password: b"s3cret".to_vec(),
        };
        assert!(c.check(b"alice", b"s3cret"));
        for (u, p) in [
            (&b"alice"[..], &b"s3cre"[..]),
            (b"alice", b"s3cret!"),
            (b"alic", b"s3cret"),
            (b"", b""),
            (b"bob", b"s3cret"),
        ] {
            assert!(!c.check(u, p), "{u:?} {p:?}");
        }
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
