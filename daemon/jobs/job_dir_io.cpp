#include "job_dir_io.hpp"

#include "log.hpp"

#include <boost/asio/post.hpp>

#include <deque>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace asio = boost::asio;

namespace hpc::daemon {

/// What the workers share with the loop. Workers hold it (never the
/// JobDirIo, never an asio object), so a worker that comes back from a hung
/// file system after the daemon's loop is gone touches nothing freed.
struct JobDirIo::Shared {
    struct Task {
        std::uint64_t id;
        std::function<void()> work;
    };
    std::mutex mutex;
    std::deque<Task> queue;
    asio::io_context* ioc;    ///< null once the owner is gone (under mutex)
    JobDirIo* owner;          ///< read and reset on the loop only
    std::size_t threads = 0;  ///< running workers (under mutex)
    std::size_t maxThreads;
};

void JobDirIo::workerLoop(const std::shared_ptr<Shared>& s) {
    std::unique_lock lock(s->mutex);
    while (s->ioc && !s->queue.empty()) {
        auto task = std::move(s->queue.front());
        s->queue.pop_front();
        lock.unlock();
        std::exception_ptr error;
        try {
            task.work();
        } catch (...) {
            error = std::current_exception();
        }
        task.work = nullptr;  // what it captured goes here, off the loop
        lock.lock();
        if (s->ioc)
            asio::post(*s->ioc, [s, id = task.id, error] {
                if (s->owner) s->owner->finish(id, error);
            });
    }
    --s->threads;
}

JobDirIo::JobDirIo(asio::io_context& ioc, std::chrono::milliseconds deadline, std::size_t maxThreads,
                   std::string subject)
    : m_ioc(ioc), m_deadline(deadline), m_subject(std::move(subject)), m_shared(std::make_shared<Shared>()) {
    m_shared->ioc = &ioc;
    m_shared->owner = this;
    m_shared->maxThreads = std::max<std::size_t>(1, maxThreads);
}

JobDirIo::~JobDirIo() {
    std::lock_guard lock(m_shared->mutex);
    m_shared->ioc = nullptr;
    m_shared->owner = nullptr;
    m_shared->queue.clear();
}

std::size_t JobDirIo::busy() const {
    std::lock_guard lock(m_shared->mutex);
    return m_shared->threads;
}

void JobDirIo::run(std::string what, std::function<void()> work, Done done, bool quiet) {
    std::uint64_t id = ++m_next;
    auto timer = std::make_unique<asio::steady_timer>(m_ioc, m_deadline);
    timer->async_wait([this, id](boost::system::error_code ec) {
        if (ec) return;
        auto it = m_pending.find(id);
        if (it == m_pending.end()) return;
        Pending p = std::move(it->second);
        m_pending.erase(it);
        auto ms = m_deadline.count();
        std::string within = ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
        std::string message =
            p.what + ": " + m_subject + " did not answer within " + within + " (a slow or hung file system?)";
        if (p.quiet)
            log::debug(message);
        else
            log::warning(message);
        p.done(message);
    });
    m_pending.emplace(id, Pending{std::move(what), std::move(done), std::move(timer), quiet});
    std::lock_guard lock(m_shared->mutex);
    m_shared->queue.push_back(Shared::Task{id, std::move(work)});
    if (m_shared->threads >= m_shared->maxThreads) return;  // a running worker takes it next
    try {
        std::thread(workerLoop, m_shared).detach();
        ++m_shared->threads;
    } catch (const std::system_error& e) {
        // No thread now: a running worker takes it, else the deadline answers.
        log::warning(std::string("cannot start a job-directory worker: ") + e.what());
    }
}

void JobDirIo::finish(std::uint64_t id, const std::exception_ptr& error) {
    auto it = m_pending.find(id);
    if (it == m_pending.end()) return;  // answered by the deadline already
    Pending p = std::move(it->second);
    m_pending.erase(it);
    p.timer->cancel();
    std::string message;
    if (error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            message = p.what + ": " + e.what();
        } catch (...) {
            message = p.what + ": failed";
        }
    }
    p.done(message);
}

}  // namespace hpc::daemon
