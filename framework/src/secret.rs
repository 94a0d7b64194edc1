//! Secrets kept in files (a mounted Kubernetes secret, a file only the service user can
//! read): the Kafka and Cassandra passwords and the admin token.

use std::path::Path;

/// The secret in `path`: its first line (the newline that ends it is not part of it).
pub fn read(path: impl AsRef<Path>) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_line_is_the_secret() {
        let file = std::env::temp_dir().join(format!("tributary-secret-{}", std::process::id()));
        std::fs::write(&file, "s3cret \r\nsecond line\n").expect("write");
        assert_eq!(super::read(&file).expect("read"), "s3cret ");
        let _ = std::fs::remove_file(&file);
        assert!(super::read(&file).is_err());
    }
}
