//! Certificates for the tests' TLS listeners, issued by `openssl`.

/// A certificate for 127.0.0.1 and localhost issued by a fresh CA, made with `openssl`: the
/// chain (the certificate, then the CA's) and the key, as PEM.
pub fn issued() -> (String, String) {
    let dir = std::env::temp_dir().join(format!("efms-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=efms test CA"],
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj", "/CN=efms", "-keyout", "key.pem", "-out", "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let issued = (
        format!("{}{}", read("leaf.pem"), read("ca.pem")),
        read("key.pem"),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    issued
}
