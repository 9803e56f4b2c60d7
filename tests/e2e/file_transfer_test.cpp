// hpc-agent cp end to end (issue 22): agent -> hpc-relay -> hpc-daemond over
// TLS, real files both ways. One relay and one daemon serve every test here.
#include "harness.hpp"

#include "errors.hpp"
#include "file_copy.hpp"
#include "file_transfer.hpp"
#include "file_wire.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

/// Relative path, type, mode and content (or target) of everything below `dir`.
std::map<std::string, std::string> describeTree(const fs::path& dir) {
    std::map<std::string, std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
        auto rel = fs::relative(e.path(), dir).string();
        struct stat st {};
        ::lstat(e.path().c_str(), &st);
        std::string d = std::to_string(st.st_mode & 07777) + " ";
        if (e.is_symlink())
            d += "-> " + fs::read_symlink(e.path()).string();
        else if (e.is_regular_file())
            d += sha256(readFile(e.path()));
        else
            d += "dir";
        out[rel] = d;
    }
    return out;
}

/// Names of the upload's temporary files left below `dir`.
std::vector<std::string> partFiles(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir))
        if (e.path().filename().string().find(".hpc-part") != std::string::npos) out.push_back(e.path().string());
    return out;
}

class FileTransferTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        s_h = new Harness();
        s_h->startRelay();
        s_work = s_h->dir() / "work";
        s_outside = s_h->dir() / "outside";
        fs::create_directories(s_work);
        fs::create_directories(s_outside);
        auto r = s_h->setupDaemon("f", "files@example.org", {s_work.string()});
        ASSERT_EQ(r.status, 0) << r.err;
        // A full disk (root only): a small tmpfs under the allowed directory,
        // in a mount namespace of this process's own that the daemon inherits.
        if (::geteuid() == 0 && ::unshare(CLONE_NEWNS) == 0 &&
            ::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0) {
            fs::create_directories(s_work / "small");
            s_smallDisk =
                ::mount("tmpfs", (s_work / "small").c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755") == 0;
        }
        s_h->startDaemon("f", {"--reconnect-max-seconds", "1"});
        s_token = new Secret(s_h->login("files@example.org"));
        ASSERT_TRUE(s_h->waitConnected(*s_token, "f")) << s_h->daemonLog("f");
    }
    static void TearDownTestSuite() {
        delete s_token;
        delete s_h;
        s_h = nullptr;
    }
    void SetUp() override {
        ASSERT_TRUE(s_h->waitConnected(*s_token, "f")) << s_h->daemonLog("f");
        m_local = s_h->dir() / ("local-" + std::to_string(++s_test));
        fs::create_directories(m_local);
    }

    static std::vector<std::string> env() {
        return {"HPC_AGENT_URL=" + s_h->url(), "HPC_AGENT_TOKEN=" + s_token->reveal(), "HPC_AGENT_CA=" + s_h->caFile()};
    }
    static CommandResult cp(std::vector<std::string> args) {
        args.insert(args.begin(), {Harness::binary("hpc-agent"), "cp"});
        return runCommand(args, "", env(), 120s);
    }
    /// cp --json: the summary.
    static json::object cpJson(std::vector<std::string> args, int expectStatus = 0) {
        args.insert(args.begin(), "--json");
        auto r = cp(args);
        EXPECT_EQ(r.status, expectStatus) << r.err;
        json::error_code ec;
        auto v = json::parse(r.out, ec);
        if (ec || !v.is_object()) {
            ADD_FAILURE() << "not a JSON summary: " << r.out << r.err;
            return {};
        }
        return v.as_object();
    }
    static std::string firstSha(const json::object& summary) {
        return std::string(summary.at("items").as_array().at(0).as_object().at("sha256").as_string());
    }
    static agent::Copier copier(agent::CopyCallbacks callbacks, agent::CopyOptions options = {}) {
        options.retryCap = 2s;
        return agent::Copier([] { return s_h->agent(*s_token); }, options, std::move(callbacks));
    }

    static inline Harness* s_h = nullptr;
    static inline Secret* s_token = nullptr;
    static inline fs::path s_work, s_outside;
    static inline bool s_smallDisk = false;
    static inline int s_test = 0;
    fs::path m_local;
};

}  // namespace

TEST_F(FileTransferTest, CopiesBinaryFilesOfEverySizeBothWaysWithTheSameChecksum) {
    // 9 MiB is more than two windows: the copy lives on the credit it is granted.
    for (std::size_t size : {std::size_t(0), std::size_t(1), std::size_t((1 << 20) + 1), std::size_t(9 << 20)}) {
        SCOPED_TRACE(size);
        std::string data = binaryData(size, static_cast<unsigned>(size));
        std::string name = "bin-" + std::to_string(size);
        writeBytes(m_local / name, data);
        auto up = cpJson({(m_local / name).string(), "f:" + name});
        EXPECT_EQ(firstSha(up), sha256(data));
        EXPECT_EQ(readFile(s_work / name), data);
        auto down = cpJson({"f:" + name, (m_local / (name + ".back")).string()});
        EXPECT_EQ(firstSha(down), sha256(data));
        EXPECT_EQ(readFile(m_local / (name + ".back")), data);
    }
    EXPECT_TRUE(partFiles(s_work).empty());
    EXPECT_TRUE(partFiles(m_local).empty());
}

TEST_F(FileTransferTest, TreesKeepModesSymlinksAndNamesWithSpacesNewlinesAndAnyBytes) {
    auto tree = m_local / "tree";
    fs::create_directories(tree / "sub" / "deeper");
    writeBytes(tree / "a b.txt", "spaces");
    writeBytes(tree / "new\nline", "newline");
    writeBytes(tree / "\xff\xfe-not-utf8", binaryData(70000, 3));
    writeBytes(tree / "sub" / "deeper" / "run.sh", "#!/bin/sh\n");
    fs::permissions(tree / "sub" / "deeper" / "run.sh", fs::perms(0750));
    fs::permissions(tree / "a b.txt", fs::perms(0600));
    fs::create_symlink("a b.txt", tree / "link");
    fs::create_symlink("../sub", tree / "sub" / "deeper" / "up");
    // -p keeps a directory's exact mode (even without owner write) and its
    // times, set once its content is in.
    fs::create_directory(tree / "read-only");
    fs::permissions(tree / "read-only", fs::perms(0500));
    const timespec kWhen{1000000000, 500000000};
    const timespec times[2] = {kWhen, kWhen};
    ASSERT_EQ(::utimensat(AT_FDCWD, (tree / "sub").c_str(), times, 0), 0);
    auto mtimeOf = [](const fs::path& p) {
        struct stat st {};
        EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
        return std::make_pair(st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    };
    const auto kWhenPair = std::make_pair(kWhen.tv_sec, kWhen.tv_nsec);
    auto up = cpJson({"-r", "-p", tree.string(), "f:uploaded"});
    EXPECT_TRUE(up.at("ok").as_bool());
    EXPECT_EQ(describeTree(s_work / "uploaded"), describeTree(tree));
    EXPECT_TRUE(fs::is_symlink(s_work / "uploaded" / "link")) << "kept as a symlink, not followed";
    EXPECT_EQ(mtimeOf(s_work / "uploaded" / "sub"), kWhenPair);
    auto down = cpJson({"-r", "-p", "f:uploaded", (m_local / "back").string()});
    EXPECT_TRUE(down.at("ok").as_bool());
    EXPECT_EQ(describeTree(m_local / "back"), describeTree(tree));
    EXPECT_EQ(mtimeOf(m_local / "back" / "sub"), kWhenPair);
}

TEST_F(FileTransferTest, SeveralSourcesGoIntoADirectoryAndStandardStreamsWork) {
    writeBytes(m_local / "one", "1");
    writeBytes(m_local / "two", "22");
    fs::create_directories(s_work / "into");
    auto r = cp({(m_local / "one").string(), (m_local / "two").string(), "f:into/"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(readFile(s_work / "into" / "one"), "1");
    EXPECT_EQ(readFile(s_work / "into" / "two"), "22");
    r = cp({(m_local / "one").string(), (m_local / "two").string(), "f:nowhere"});
    EXPECT_EQ(r.status, 255) << "several sources need a directory";
    EXPECT_NE(r.err.find("not a directory"), std::string::npos) << r.err;
    // Standard input and output: any bytes, any size.
    std::string data = binaryData(3 << 20, 7);
    writeBytes(m_local / "stream", data);
    auto shell = [&](const std::string& line) { return runCommand({"sh", "-c", line}, "", env(), 120s); };
    std::string agentBin = Harness::binary("hpc-agent");
    r = shell(agentBin + " cp - f:from-stdin < '" + (m_local / "stream").string() + "'");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(readFile(s_work / "from-stdin"), data);
    r = shell(agentBin + " cp f:from-stdin - > '" + (m_local / "to-stdout").string() + "'");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(readFile(m_local / "to-stdout"), data);
}

TEST_F(FileTransferTest, PathsOutsideTheAllowedDirectoriesAreRefusedAndNothingIsWritten) {
    writeBytes(m_local / "x", "payload");
    auto r = cp({(m_local / "x").string(), "f:" + (s_outside / "x").string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("outside the allowed directories"), std::string::npos) << r.err;
    r = cp({(m_local / "x").string(), "f:../outside/y"});
    EXPECT_EQ(r.status, 1) << r.err;
    // A symlink on the way, or in the target's place, that leads outside.
    fs::create_directory_symlink(s_outside, s_work / "escape");
    r = cp({(m_local / "x").string(), "f:escape/z"});
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_TRUE(r.err.find("PATH_NOT_ALLOWED") != std::string::npos || r.err.find("outside") != std::string::npos)
        << r.err;
    fs::create_symlink(s_outside / "victim", s_work / "trap");
    r = cp({(m_local / "x").string(), "f:trap"});
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_TRUE(fs::is_empty(s_outside)) << "nothing was written outside";
    // -r: a symlink that would point outside is refused; the rest arrives.
    auto tree = m_local / "t";
    fs::create_directories(tree);
    writeBytes(tree / "fine", "ok");
    fs::create_symlink("/etc/passwd", tree / "evil");
    auto summary = cpJson({"-r", tree.string(), "f:t"}, 1);
    EXPECT_FALSE(summary.at("ok").as_bool());
    EXPECT_EQ(readFile(s_work / "t" / "fine"), "ok");
    EXPECT_FALSE(fs::exists(fs::symlink_status(s_work / "t" / "evil")));
    bool refused = false;
    for (const auto& i : summary.at("items").as_array())
        if (i.as_object().at("source").as_string().ends_with("evil"))
            refused = i.as_object().at("code").as_string() == "PATH_NOT_ALLOWED";
    EXPECT_TRUE(refused) << json::serialize(summary);
}

TEST_F(FileTransferTest, AnInterruptedUploadLeavesNoFinalFileAndResumesFromWhatArrived) {
    std::string data = binaryData(12 << 20, 11);
    writeBytes(m_local / "big", data);
    {
        auto client = s_h->agent(*s_token);
        agent::FileClient files(*client, "f");
        int fd = ::open((m_local / "big").c_str(), O_RDONLY | O_CLOEXEC);
        agent::UploadSource src{fd, true, data.size(), nullptr};
        files::PutSpec spec;
        spec.path = "interrupted";
        // The agent goes away mid-file, as a killed process does.
        EXPECT_THROW(files.put(spec, src,
                               [](std::uint64_t done, std::optional<std::uint64_t>) {
                                   if (done >= (5u << 20)) throw std::runtime_error("the agent dies");
                               }),
                     std::runtime_error);
        ::close(fd);
    }
    EXPECT_FALSE(fs::exists(s_work / "interrupted")) << "no partial file under the final name";
    auto summary = cpJson({"--resume", (m_local / "big").string(), "f:interrupted"});
    const auto& item = summary.at("items").as_array().at(0).as_object();
    EXPECT_EQ(item.at("sha256").as_string(), sha256(data));
    ASSERT_TRUE(item.contains("resumed_from")) << json::serialize(summary);
    EXPECT_GT(item.at("resumed_from").as_int64(), 0);
    EXPECT_EQ(readFile(s_work / "interrupted"), data);
    EXPECT_TRUE(partFiles(s_work).empty());
}

TEST_F(FileTransferTest, AnInterruptedDownloadLeavesNoFileHere) {
    writeBytes(s_work / "remote-big", binaryData(8 << 20, 5));
    bool stop = false;
    agent::CopyCallbacks cb;
    cb.progress = [&](const std::string&, std::uint64_t done, std::optional<std::uint64_t>) {
        stop = stop || done >= (2u << 20);
    };
    cb.interrupted = [&] { return stop; };  // as Ctrl-C does
    auto c = copier(cb);
    c.copy({{"f", "remote-big"}}, {"", (m_local / "got").string()});
    ASSERT_EQ(c.items().size(), 1u);
    EXPECT_FALSE(c.items()[0].ok);
    EXPECT_FALSE(fs::exists(m_local / "got"));
    EXPECT_TRUE(partFiles(m_local).empty()) << "Ctrl-C removes the part received";
}

TEST_F(FileTransferTest, ATransferOutlivesARelayRestartBothWays) {
    std::string data = binaryData(64 << 20, 13);
    writeBytes(m_local / "huge", data);
    for (bool upload : {true, false}) {
        SCOPED_TRACE(upload ? "upload" : "download");
        bool restarted = false;
        int retries = 0;
        agent::CopyCallbacks cb;
        cb.progress = [&](const std::string&, std::uint64_t done, std::optional<std::uint64_t>) {
            if (restarted || done < (16u << 20)) return;
            restarted = true;
            s_h->stopRelay();
            s_h->startRelay();
        };
        cb.retrying = [&](const std::string&, std::chrono::milliseconds) { ++retries; };
        auto c = copier(cb);
        if (upload)
            c.copy({{"", (m_local / "huge").string()}}, {"f", "huge"});
        else
            c.copy({{"f", "huge"}}, {"", (m_local / "huge.back").string()});
        ASSERT_EQ(c.items().size(), 1u);
        const auto& item = c.items()[0];
        ASSERT_TRUE(item.ok) << item.error;
        EXPECT_TRUE(restarted);
        EXPECT_GE(retries, 1);
        EXPECT_GT(item.resumedFrom, 0u) << "it went on from what had arrived";
        EXPECT_EQ(item.sha256, sha256(data));
    }
    EXPECT_EQ(readFile(s_work / "huge"), data);
    EXPECT_EQ(readFile(m_local / "huge.back"), data);
    EXPECT_TRUE(partFiles(s_work).empty());
    EXPECT_TRUE(partFiles(m_local).empty());
}

TEST_F(FileTransferTest, AFullDiskFailsTheUploadAndRemovesWhatWasWritten) {
    if (!s_smallDisk) GTEST_SKIP() << "mounting a tmpfs needs root";
    writeBytes(m_local / "too-big", binaryData(8 << 20, 17));
    auto summary = cpJson({(m_local / "too-big").string(), "f:small/too-big"}, 1);
    const auto& item = summary.at("items").as_array().at(0).as_object();
    EXPECT_EQ(item.at("code").as_string(), "STORAGE_FULL") << json::serialize(summary);
    EXPECT_TRUE(fs::is_empty(s_work / "small")) << "what was written is removed";
    // The next file on the same connection is not hurt by the failed one's
    // bytes still in flight, and the disk takes it.
    auto tree = m_local / "tree";
    fs::create_directories(tree);
    writeBytes(tree / "a-too-big", binaryData(8 << 20, 18));
    writeBytes(tree / "b-fits", binaryData(1 << 20, 19));
    summary = cpJson({"-r", tree.string(), "f:small/tree"}, 1);
    std::map<std::string, std::string> codes;
    for (const auto& i : summary.at("items").as_array()) {
        const auto& o = i.as_object();
        codes[fs::path(std::string(o.at("source").as_string())).filename()] =
            o.at("ok").as_bool() ? "ok" : std::string(o.at("code").as_string());
    }
    EXPECT_EQ(codes["a-too-big"], "STORAGE_FULL") << json::serialize(summary);
    EXPECT_EQ(codes["b-fits"], "ok") << json::serialize(summary);
    EXPECT_EQ(readFile(s_work / "small" / "tree" / "b-fits"), binaryData(1 << 20, 19));
    EXPECT_TRUE(partFiles(s_work / "small").empty());
}

TEST_F(FileTransferTest, MissingPathsAndDirectoriesWithoutRecursiveAreClearErrors) {
    auto r = cp({"f:no-such-file", (m_local / "x").string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("no such file"), std::string::npos) << r.err;
    fs::create_directories(s_work / "adir");
    r = cp({"f:adir", (m_local / "x").string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("-r"), std::string::npos) << r.err;
    r = cp({(m_local / "nothing-here").string(), "f:x"});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("No such file"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(m_local / "x"));
}
