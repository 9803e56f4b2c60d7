#pragma once
/// TLS settings every client of the platform uses (the daemon's link, the
/// CLIs): peer verification against a CA file or the system store, TLS 1.2 at
/// least, SNI for host names, and host-name or IP verification. Header-only:
/// it is included by the translation units that already use Asio's SSL.

#include "util.hpp"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>
#include <boost/asio/ssl.hpp>

#include <cstdlib>
#include <string>

namespace hpc::tls {

/// Where distributions keep the system's CA bundle: Debian and Ubuntu,
/// RHEL/Rocky/Alma/Fedora, SUSE, and the p11-kit extract.
inline constexpr const char* kSystemCaBundles[] = {
    "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/cert.pem"};

/// Configures a client context. Returns the error of loading the CA
/// certificates (empty `caFile`: the system store, found on Debian- and
/// RHEL-like systems alike).
inline boost::system::error_code configureClient(boost::asio::ssl::context& ctx, const std::string& caFile) {
    namespace ssl = boost::asio::ssl;
    ctx.set_verify_mode(ssl::verify_peer);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                    ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    boost::system::error_code ec;
    if (!caFile.empty()) {
        ctx.load_verify_file(caFile, ec);
        return ec;
    }
    // OpenSSL's default store (it honours SSL_CERT_FILE and SSL_CERT_DIR) is
    // where the library was built to look: /usr/lib/ssl for Debian's, which
    // a relocated copy on RHEL does not have. Then the distributions' own.
    ctx.set_default_verify_paths(ec);
    if (ec || std::getenv(X509_get_default_cert_file_env()) || std::getenv(X509_get_default_cert_dir_env()) ||
        ::access(X509_get_default_cert_file(), R_OK) == 0)
        return ec;
    for (const char* bundle : kSystemCaBundles) {
        if (::access(bundle, R_OK) != 0) continue;
        ctx.load_verify_file(bundle, ec);
        return ec;
    }
    return ec;
}

/// Names the peer a stream must prove to be: SNI (not for IP literals) and
/// verification of the certificate's host name or IP address.
template <class SslStream>
bool expectPeer(SslStream& stream, const std::string& host) {
    if (!isIpLiteral(host) && !SSL_set_tlsext_host_name(stream.native_handle(), host.c_str())) return false;
    stream.set_verify_callback(boost::asio::ssl::host_name_verification(host));
    return true;
}

}  // namespace hpc::tls
