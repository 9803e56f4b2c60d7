#pragma once
/// TLS settings every client of the platform uses (the daemon's link, the
/// CLIs): peer verification against a CA file or the system store, TLS 1.2 at
/// least, SNI for host names, and host-name or IP verification. Header-only:
/// it is included by the translation units that already use Asio's SSL.

#include "util.hpp"

#include <boost/asio/ssl.hpp>
#include <openssl/ssl.h>

#include <string>

namespace hpc::tls {

/// Configures a client context. Returns the error of loading the CA
/// certificates (empty `caFile`: the system store).
inline boost::system::error_code configureClient(boost::asio::ssl::context& ctx, const std::string& caFile) {
    namespace ssl = boost::asio::ssl;
    ctx.set_verify_mode(ssl::verify_peer);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                    ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    boost::system::error_code ec;
    if (!caFile.empty())
        ctx.load_verify_file(caFile, ec);
    else
        ctx.set_default_verify_paths(ec);
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
