//! RS256 JSON Web Tokens for the OAuth grants that authenticate with a
//! signed assertion: the Google service account's JWT bearer grant and the
//! Okta service app's private-key JWT. One encoder; the signer differs (the
//! Google key file's own signer, or an RSA key read from PEM here).

use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use serde_json::{Value, json};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `header.claims.signature`, with `alg` RS256 and `kid` when given.
pub fn rs256<E>(
    claims: &Value,
    kid: Option<&str>,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<String, E> {
    let mut header = json!({"alg": "RS256", "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    let unsigned = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(unsigned.as_bytes())?;
    Ok(format!("{unsigned}.{}", b64(&sig)))
}

/// An RSA private key from PEM (`PRIVATE KEY`, PKCS#8, or `RSA PRIVATE KEY`,
/// PKCS#1). The error never contains the key.
pub struct RsaKey(RsaKeyPair);

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaKey(***)")
    }
}

impl RsaKey {
    pub fn from_pem(pem: &str) -> Result<RsaKey, String> {
        let pkcs1 = pem.contains("BEGIN RSA PRIVATE KEY");
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| "the key is not PEM (base64 between BEGIN and END lines)".to_string())?;
        let kp = if pkcs1 {
            RsaKeyPair::from_der(&der)
        } else {
            RsaKeyPair::from_pkcs8(&der)
        };
        kp.map(RsaKey)
            .map_err(|_| "the key is not an RSA private key (PKCS#8 or PKCS#1 PEM)".to_string())
    }

    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let mut sig = vec![0u8; self.0.public_modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                msg,
                &mut sig,
            )
            .map_err(|_| "signing with the key failed".to_string())?;
        Ok(sig)
    }
}

/// The access token and its lifetime from an OAuth token response (the
/// JWT-bearer grants of Google and Okta answer alike); an hour when it
/// states none.
pub fn access_token(v: &Value) -> Result<(crate::secret::Secret, std::time::Duration), String> {
    let token = v["access_token"]
        .as_str()
        .ok_or_else(|| "the token response has no access_token".to_string())?;
    let lifetime = v["expires_in"].as_u64().unwrap_or(3600);
    Ok((
        crate::secret::Secret::new(token),
        std::time::Duration::from_secs(lifetime),
    ))
}
