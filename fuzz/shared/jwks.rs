//! Shared by the `jwks` fuzz target and tests/props.rs: every algorithm the allow-list can
//! name, real public key material (the committed fuzz keys), and the property a parsed key set
//! must have.
#![allow(dead_code)]

use jsonwebtoken::Algorithm;
use scopegate::auth::jwks::KeySet;

/// Every algorithm, in the order the allow-list mask's bits select them.
pub const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// The allow-list a mask selects from [`ALL_ALGS`].
pub fn allowed(mask: u16) -> Vec<Algorithm> {
    ALL_ALGS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, a)| *a).collect()
}

/// Public key material that parses as real keys.
pub struct Material {
    /// An uncompressed P-256 point: `0x04 || x || y`.
    pub ec_point: Vec<u8>,
    pub ed25519: Vec<u8>,
    /// A 2048-bit RSA modulus (any odd number of that size parses as a key).
    pub rsa_n: Vec<u8>,
}

pub fn material() -> Material {
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    let ec = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, include_bytes!("../keys/es256.pk8.der"))
        .expect("P-256 PKCS#8");
    let ed = Ed25519KeyPair::from_pkcs8_maybe_unchecked(include_bytes!("../keys/ed25519.pk8.der")).expect("Ed25519");
    let mut rsa_n = vec![0xc5u8; 256];
    rsa_n[255] |= 1;
    Material { ec_point: ec.public_key().as_ref().to_vec(), ed25519: ed.public_key().as_ref().to_vec(), rsa_n }
}

/// Parses `doc` under `allowed`; when it parses, the set is not empty and every key in it allows
/// some algorithms, all from the allow-list and none an HMAC one.
pub fn check_keyset(doc: &[u8], allowed: &[Algorithm]) {
    let Ok(set) = KeySet::parse(doc, allowed) else {
        return;
    };
    assert!(!set.is_empty(), "an empty set parsed");
    let mut count = 0;
    for key in set.all() {
        count += 1;
        let algs: Vec<Algorithm> = key.algorithms().collect();
        assert!(!algs.is_empty(), "a key that allows nothing was kept");
        for a in algs {
            assert!(allowed.contains(&a), "key allows {a:?}, outside the allow-list {allowed:?}");
            assert!(!matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512), "an HMAC key was kept");
            assert!(key.allows(a));
        }
        for a in ALL_ALGS {
            if !allowed.contains(&a) {
                assert!(!key.allows(a), "key allows {a:?}, outside the allow-list {allowed:?}");
            }
        }
    }
    assert_eq!(count, set.len());
}
