#pragma once
/// File work on job directories, off the event loop (design: "jobs").
///
/// Job directories live on NFS or Lustre on most clusters, where an open,
/// read or fsync can stall for seconds or hang until a server comes back.
/// The daemon's loop also carries the link's heartbeat, every shell and
/// D-Bus: it must never wait on such a file system. Each call here runs on a
/// worker thread and answers on the loop, with its result or, after the
/// deadline, with an error that says the directory did not answer; a worker
/// stuck in the kernel stays stuck alone (threads are bounded, calls beyond
/// the bound wait their turn under the same deadline). The work must touch
/// only what it captured by value.

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace hpc::daemon {

class JobDirIo {
public:
    /// `error` is empty on success, else what went wrong, fit to show a user.
    using Done = std::function<void(const std::string& error)>;

    /// `subject` names what did not answer in the timeout message (file
    /// transfers use an instance of their own: "the file system").
    JobDirIo(boost::asio::io_context& ioc, std::chrono::milliseconds deadline, std::size_t maxThreads = 4,
             std::string subject = "the job directory");
    ~JobDirIo();
    JobDirIo(const JobDirIo&) = delete;
    JobDirIo& operator=(const JobDirIo&) = delete;

    /// Runs `work` on a worker; `done` runs on the loop exactly once. `what`
    /// names the work in the timeout message ("reading job j1's output"),
    /// logged as a warning unless `quiet` (work nobody waits for: debug).
    void run(std::string what, std::function<void()> work, Done done, bool quiet = false);

    /// The same with a result: `done(value, "")`, or `done(nullopt, error)`.
    template <class T>
    void run(std::string what, std::function<T()> work, std::function<void(std::optional<T>, const std::string&)> done,
             bool quiet = false) {
        auto result = std::make_shared<std::optional<T>>();
        run(
            std::move(what), [result, work = std::move(work)] { *result = work(); },
            [result, done = std::move(done)](const std::string& error) {
                if (error.empty())
                    done(std::move(*result), error);
                else
                    done(std::nullopt, error);
            },
            quiet);
    }

    std::chrono::milliseconds deadline() const { return m_deadline; }
    /// Workers busy now (stuck ones included).
    std::size_t busy() const;

    struct Shared;

private:
    struct Pending {
        std::string what;
        Done done;
        std::unique_ptr<boost::asio::steady_timer> timer;
        bool quiet = false;
    };
    void finish(std::uint64_t id, const std::exception_ptr& error);
    static void workerLoop(const std::shared_ptr<Shared>& s);

    boost::asio::io_context& m_ioc;
    std::chrono::milliseconds m_deadline;
    std::string m_subject;
    std::shared_ptr<Shared> m_shared;
    std::map<std::uint64_t, Pending> m_pending;  ///< on the loop only
    std::uint64_t m_next = 0;
};

}  // namespace hpc::daemon
