// libFuzzer target: the relay's HTTP API (routes, bodies, credentials), on a
// real database. The input is "METHOD\nTARGET\nAUTHORIZATION\nBODY"; in the
// authorization, @ACCESS@ and @KEY@ become a valid access token and API key,
// so the routes behind sign-in are reached too. Every answer must be a JSON
// object with a status the route table allows, errors must carry a code, and
// nothing may end in an internal error. The OAuth routes (MCP's
// authorization flow) answer in OAuth's own forms, checked apart.
#include "api.hpp"
#include "hub.hpp"
#include "log.hpp"
#include "relay_db.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

namespace json = boost::json;
using namespace hpc;
using namespace hpc::relay;

namespace {

void require(bool ok) {
    if (!ok) std::abort();
}

struct World {
    // In memory: the fuzzer signs in a lot, and nothing is left behind
    // however the run ends.
    RelayDb db{":memory:"};
    Hub hub{db};
    Api api{db, hub, [](const std::string&, const Secret&) {}};
    std::string access;
    std::string key;

    World() {
        api.setSigninLimitPerClient(0);  // the per-email limits still apply
        auto token = db.startSignin("fuzz@example.org", Secret("123456"));
        std::int64_t userId = 0;
        require(token && db.verifyCode(*token, Secret("123456"), userId) == VerifyOutcome::Ok);
        access = db.issueAccessToken(userId, "fuzz").second.reveal();
        key = db.issueCredential(userId, "api_key", std::nullopt).second.reveal();
    }
};

std::string nextLine(std::string_view& in) {
    auto nl = in.find('\n');
    std::string line(in.substr(0, nl));
    in.remove_prefix(nl == std::string_view::npos ? in.size() : nl + 1);
    return line;
}

void replaceAll(std::string& s, std::string_view what, const std::string& with) {
    for (auto at = s.find(what); at != std::string::npos; at = s.find(what, at + with.size()))
        s.replace(at, what.size(), with);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::init({}, log::Level::Error);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static World world;
    std::string_view in(reinterpret_cast<const char*>(data), size);
    ApiRequest r;
    r.method = nextLine(in);
    r.target = nextLine(in);
    r.authorization = nextLine(in);
    replaceAll(r.authorization, "@ACCESS@", world.access);
    replaceAll(r.authorization, "@KEY@", world.key);
    r.body = std::string(in);
    r.remote = "192.0.2.1:40000";
    r.contentType = r.body.starts_with('{') ? "application/json" : "application/x-www-form-urlencoded";
    r.base = "https://relay.example.org";

    auto res = world.api.handle(r);
    auto path = r.target.substr(0, r.target.find('?'));
    if (path.rfind("/oauth/", 0) == 0 || path.rfind("/.well-known/", 0) == 0) {
        // MCP's authorization flow answers in OAuth's forms: a page, a redirect, or {"error": ...}.
        static const int kOAuthStatuses[] = {200, 201, 302, 400, 401, 404, 405, 429};
        require(std::find(std::begin(kOAuthStatuses), std::end(kOAuthStatuses), res.status) !=
                std::end(kOAuthStatuses));
        auto header = [&](std::string_view name) {
            return std::any_of(res.headers.begin(), res.headers.end(), [&](const auto& h) { return h.first == name; });
        };
        if (res.status == 302) {
            require(header("Location"));
            return 0;
        }
        if (res.contentType.rfind("text/html", 0) == 0) {
            require(header("Content-Security-Policy"));
            return 0;
        }
        json::error_code ec;
        auto body = json::parse(res.body, ec);
        require(!ec && body.is_object());
        if (res.status >= 400) require(body.as_object().contains("error") || body.as_object().contains("code"));
        return 0;
    }
    // 403: an API key bound to one daemon, used for another (an earlier input
    // may have registered a daemon with the key).
    static const int kStatuses[] = {200, 201, 400, 401, 403, 404, 405, 429};
    require(std::find(std::begin(kStatuses), std::end(kStatuses), res.status) != std::end(kStatuses));
    json::error_code ec;
    auto body = json::parse(res.body, ec);
    require(!ec && body.is_object());
    if (res.status >= 400) {
        const auto* status = body.as_object().if_contains("status");
        const auto* code = body.as_object().if_contains("code");
        require(status && status->is_string() && status->get_string() == "error");
        require(code && code->is_string() && !code->get_string().empty());
    }
    return 0;
}
