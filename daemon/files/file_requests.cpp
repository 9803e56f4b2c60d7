// The file.* requests answered at once (stat, list, mkdir, setattr, symlink): one
// worker step each. Transfers are file_service.cpp's.
#include "files/file_service.hpp"

#include "files/file_step.hpp"

namespace json = boost::json;
using hpc::files::displayPath;

namespace hpc::daemon {

void FileService::simple(const protocol::Envelope& env, const std::string& agentId, const Reply& reply) {
    auto path = hpc::files::optPath(env.payload, "path");
    if (!path || path->empty()) throw Error(ErrorCode::BadRequest, env.type + " needs \"path\"");
    std::string id = env.id;
    auto answer = [reply, id](Step<json::object> s) {
        reply(s.value ? protocol::makeOk(id, std::move(*s.value)) : protocol::makeError(id, s.code, s.message));
    };
    const std::string shown = displayPath(*path);
    if (env.type == "file.stat") {
        runStep<json::object>(
            m_io, "looking up " + shown,
            [policy = m_policy, path = *path] {
                std::string resolved;
                auto o = files::statPath(policy, path, resolved).toJson();
                hpc::files::putPath(o, "path", resolved);
                return o;
            },
            answer);
    } else if (env.type == "file.list") {
        auto after = hpc::files::optPath(env.payload, "after").value_or("");
        runStep<json::object>(
            m_io, "listing " + shown,
            [policy = m_policy, path = *path, after] {
                auto listing = files::listDir(policy, path, after, hpc::files::kMaxListEntries);
                json::array entries;
                for (const auto& e : listing.entries) {
                    auto o = e.info.toJson();
                    hpc::files::putPath(o, "name", e.name);
                    entries.push_back(std::move(o));
                }
                json::object o{{"entries", std::move(entries)}, {"more", listing.more}};
                hpc::files::putPath(o, "path", listing.path);
                return o;
            },
            answer);
    } else if (env.type == "file.mkdir") {
        auto mode = static_cast<std::uint32_t>(protocol::optInt(env.payload, "mode", 0, 07777).value_or(0777));
        runStep<json::object>(
            m_io, "creating directory " + shown,
            [policy = m_policy, path = *path, mode] {
                std::string resolved;
                bool created = files::makeDir(policy, path, mode, resolved);
                json::object o{{"created", created}};
                hpc::files::putPath(o, "path", resolved);
                return o;
            },
            [this, answer, agentId](Step<json::object> s) {
                if (s.value && s.value->at("created").as_bool() && m_audit) {
                    std::string p = hpc::files::optPath(*s.value, "path").value_or("");
                    m_audit(agentId, "mkdir " + displayPath(p), files::parentOf(p), 0);
                }
                answer(std::move(s));
            });
    } else if (env.type == "file.setattr") {
        auto mode = protocol::optInt(env.payload, "mode", 0, 07777);
        auto atime = protocol::optNumber(env.payload, "atime", -1e11, 1e11);
        auto mtime = protocol::optNumber(env.payload, "mtime", -1e11, 1e11);
        runStep<json::object>(
            m_io, "setting the attributes of " + shown,
            [policy = m_policy, path = *path, mode, atime, mtime] {
                std::string resolved;
                files::setDirAttributes(policy, path,
                                        mode ? std::optional(static_cast<std::uint32_t>(*mode)) : std::nullopt, atime,
                                        mtime, resolved);
                json::object o;
                hpc::files::putPath(o, "path", resolved);
                return o;
            },
            [this, answer, agentId](Step<json::object> s) {
                if (s.value && m_audit) {
                    std::string p = hpc::files::optPath(*s.value, "path").value_or("");
                    m_audit(agentId, "setattr " + displayPath(p), files::parentOf(p), 0);
                }
                answer(std::move(s));
            });
    } else {
        auto target = hpc::files::optPath(env.payload, "target");
        if (!target || target->empty()) throw Error(ErrorCode::BadRequest, "file.symlink needs \"target\"");
        runStep<json::object>(
            m_io, "creating symlink " + shown,
            [policy = m_policy, path = *path, target = *target] {
                std::string resolved;
                files::makeSymlink(policy, path, target, resolved);
                json::object o;
                hpc::files::putPath(o, "path", resolved);
                return o;
            },
            [this, answer, agentId, target = *target](Step<json::object> s) {
                if (s.value && m_audit) {
                    std::string p = hpc::files::optPath(*s.value, "path").value_or("");
                    m_audit(agentId, "symlink " + displayPath(p) + " -> " + displayPath(target), files::parentOf(p), 0);
                }
                answer(std::move(s));
            });
    }
}

}  // namespace hpc::daemon
