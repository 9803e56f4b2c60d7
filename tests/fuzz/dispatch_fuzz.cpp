// libFuzzer target: the daemon's message dispatch, payloads included. Every
// frame must be answered as the protocol says (one response per request,
// under its id; none to a response or an event), every answer must be a frame
// the platform can read, and what passes validation must hold what the code
// that runs it relies on (checked in dispatch_fuzz_stubs.cpp, which stands in
// for running it).
#include "dispatch.hpp"
#include "log.hpp"

#include <boost/asio/io_context.hpp>

#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace hpc;
using namespace hpc::daemon;

namespace {

struct World {
    fs::path root;
    boost::asio::io_context ioc;
    ExecService exec{ioc};
    std::vector<std::string> sent;
    std::unique_ptr<PtyService> pty;
    std::unique_ptr<Dispatcher> dispatch;

    World() {
        char tmpl[] = "/tmp/hpc-dispatch-fuzz-XXXXXX";
        if (!::mkdtemp(tmpl)) std::abort();
        root = tmpl;
        fs::create_directories(root / "allowed" / "sub");
        fs::create_directories(root / "outside");
        fs::create_directory_symlink(root / "outside", root / "allowed" / "escape");
        auto send = [this](std::string text) { sent.push_back(std::move(text)); };
        pty = std::make_unique<PtyService>(ioc, PtyLimits{}, send,
                                           [](std::uint32_t, const char*, std::size_t) { return true; });
        dispatch =
            std::make_unique<Dispatcher>(exec, AllowedDirs({(root / "allowed").string()}), root / "allowed", send);
        dispatch->attachPty(*pty);
    }
    ~World() {
        std::error_code ec;
        fs::remove_all(root, ec);
    }
};

void require(bool ok) {
    if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::init({}, log::Level::Error);  // bad input is logged as a warning: keep the run quiet
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static World world;
    std::string_view text(reinterpret_cast<const char*>(data), size);
    world.sent.clear();
    world.dispatch->onText(text);

    auto parsed = protocol::parse(text);
    const auto* env = std::get_if<protocol::Envelope>(&parsed);
    bool event = env && (env->isResponse() || env->type == "pong" || env->type == "pty.detach");
    if (event)
        require(world.sent.size() <= 1);  // pty.detach of a bad channel is refused
    else
        require(world.sent.size() == 1);
    for (const auto& reply : world.sent) {
        auto answer = protocol::parse(reply, protocol::kMaxResponseBytes);
        const auto* r = std::get_if<protocol::Envelope>(&answer);
        require(r != nullptr);
        if (!r->isResponse()) continue;  // pong
        // Under the request's id, or under the id read before a fault.
        if (env) require(r->replyTo == env->id);
        if (auto* err = std::get_if<protocol::ProtocolError>(&parsed)) require(r->replyTo == err->replyTo);
    }
    return 0;
}
