//! Kubeconfigs of remote sync targets, checked before use.
//!
//! A tenant writes the kubeconfig, and the operator then connects with it from inside the
//! region. Everything in it that would make the operator act with its own authority, or read
//! its own files, is refused:
//! - `exec` and `auth-provider` (they run commands or plugins in the operator's process);
//! - file references (`certificate-authority`, `client-certificate`, `client-key`,
//!   `tokenFile`): the operator would read, and send, its own files, such as its
//!   ServiceAccount token;
//! - `insecure-skip-tls-verify` and `proxy-url` (the credential's secret would cross the
//!   network unauthenticated, or through a third party);
//! - a server that is not `https://`, or that is a link-local or unspecified address (cloud
//!   metadata endpoints).
//!
//! Only embedded data remains: the server, its CA, a client certificate and key, a bearer
//! token, or a user name and password.

use std::net::IpAddr;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// How long connecting to a remote apiserver may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a kubeconfig was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    /// Not a kubeconfig.
    #[error("not a kubeconfig: {0}")]
    Syntax(String),
    /// No context to use.
    #[error("the kubeconfig has no current-context and not exactly one context")]
    NoContext,
    /// A field the operator does not accept from a tenant.
    #[error("the kubeconfig sets {0}, which the operator does not accept: {1}")]
    Refused(&'static str, &'static str),
    /// The server URL is not acceptable.
    #[error("the kubeconfig's server {0:?} is not acceptable: {1}")]
    Server(String, &'static str),
    /// kube could not make a configuration of it.
    #[error("the kubeconfig cannot be used: {0}")]
    Unusable(String),
}

/// The client configuration of a tenant's kubeconfig, if it passes the checks above.
pub async fn tenant_config(yaml: &[u8]) -> Result<kube::Config, KubeconfigError> {
    let text =
        std::str::from_utf8(yaml).map_err(|_| KubeconfigError::Syntax("not UTF-8".into()))?;
    let kubeconfig =
        Kubeconfig::from_yaml(text).map_err(|e| KubeconfigError::Syntax(e.to_string()))?;
    let context = used_context(&kubeconfig)?;
    check(&kubeconfig, &context)?;
    let options = KubeConfigOptions {
        context: Some(context),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| KubeconfigError::Unusable(e.to_string()))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Ok(config)
}

/// The context the kubeconfig selects: `current-context`, or its only context.
fn used_context(kubeconfig: &Kubeconfig) -> Result<String, KubeconfigError> {
    if let Some(current) = kubeconfig
        .current_context
        .as_ref()
        .filter(|c| !c.is_empty())
    {
        return Ok(current.clone());
    }
    match kubeconfig.contexts.as_slice() {
        [only] => Ok(only.name.clone()),
        _ => Err(KubeconfigError::NoContext),
    }
}

/// Checks the cluster and user the context uses.
fn check(kubeconfig: &Kubeconfig, context: &str) -> Result<(), KubeconfigError> {
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .ok_or(KubeconfigError::NoContext)?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| KubeconfigError::Unusable(format!("no cluster {:?}", context.cluster)))?;
    if cluster.certificate_authority.is_some() {
        return Err(KubeconfigError::Refused(
            "certificate-authority",
            "a file of the operator; embed it as certificate-authority-data",
        ));
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(KubeconfigError::Refused(
            "insecure-skip-tls-verify",
            "the server must be verified; give certificate-authority-data",
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(KubeconfigError::Refused(
            "proxy-url",
            "the operator connects to the server directly",
        ));
    }
    check_server(cluster.server.as_deref().unwrap_or_default())?;
    let user = context.user.as_deref().and_then(|name| {
        kubeconfig
            .auth_infos
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.auth_info.as_ref())
    });
    if let Some(user) = user {
        if user.exec.is_some() {
            return Err(KubeconfigError::Refused(
                "users[].user.exec",
                "it would run a command in the operator; embed a token or client certificate",
            ));
        }
        if user.auth_provider.is_some() {
            return Err(KubeconfigError::Refused(
                "users[].user.auth-provider",
                "embed a token or client certificate",
            ));
        }
        for (set, field) in [
            (user.client_certificate.is_some(), "client-certificate"),
            (user.client_key.is_some(), "client-key"),
            (user.token_file.is_some(), "tokenFile"),
        ] {
            if set {
                return Err(KubeconfigError::Refused(
                    field,
                    "a file of the operator; embed the data (client-certificate-data, \
                     client-key-data, token)",
                ));
            }
        }
    }
    Ok(())
}

/// The server must be `https://` and not a link-local or unspecified address.
fn check_server(server: &str) -> Result<(), KubeconfigError> {
    let refused = |why| KubeconfigError::Server(server.to_owned(), why);
    let uri: http::Uri = server.parse().map_err(|_| refused("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(refused("only https:// servers are accepted"));
    }
    let host = uri.host().ok_or_else(|| refused("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if link_local || ip.is_unspecified() || ip.is_multicast() {
            return Err(refused(
                "link-local, unspecified and multicast addresses are not accepted",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
             clusters: [{{name: k, cluster: {{{cluster}}}}}]\n\
             users: [{{name: u, user: {{{user}}}}}]\n"
        )
    }

    #[tokio::test]
    async fn embedded_data_is_accepted() {
        let ok = kubeconfig("server: 'https://10.0.0.1:6443'", "token: abc");
        let config = tenant_config(ok.as_bytes()).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:6443/");
        assert_eq!(config.connect_timeout, Some(CONNECT_TIMEOUT));
    }

    #[tokio::test]
    async fn what_would_act_as_the_operator_is_refused() {
        for (cluster, user, needle) in [
            ("server: 'http://10.0.0.1'", "token: a", "only https://"),
            (
                "server: 'https://169.254.169.254'",
                "token: a",
                "link-local",
            ),
            ("server: 'https://[fe80::1]:6443'", "token: a", "link-local"),
            ("server: 'https://0.0.0.0'", "token: a", "unspecified"),
            (
                "server: 'https://k', certificate-authority: /etc/ca.crt",
                "token: a",
                "certificate-authority",
            ),
            (
                "server: 'https://k', insecure-skip-tls-verify: true",
                "token: a",
                "insecure-skip-tls-verify",
            ),
            (
                "server: 'https://k', proxy-url: 'http://p'",
                "token: a",
                "proxy-url",
            ),
            (
                "server: 'https://k'",
                "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                "tokenFile",
            ),
            (
                "server: 'https://k'",
                "client-certificate: /a, client-key: /b",
                "client-certificate",
            ),
            (
                "server: 'https://k'",
                "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}",
                "exec",
            ),
            (
                "server: 'https://k'",
                "auth-provider: {name: gcp}",
                "auth-provider",
            ),
        ] {
            let err = tenant_config(kubeconfig(cluster, user).as_bytes())
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{cluster} / {user}: {err}");
        }
        let err = tenant_config(b"{").await.unwrap_err();
        assert!(matches!(err, KubeconfigError::Syntax(_)), "{err}");
    }
}
