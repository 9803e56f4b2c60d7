// The file work behind file.* on a real file system: temporary name and
// rename, checksums, and the confinement of writes (allowed directories,
// symlinks, the daemon's own state).
#include "files/file_ops.hpp"

#include "errors.hpp"
#include "file_wire.hpp"
#include "harness.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace hpc;
using namespace hpc::daemon::files;
namespace fs = std::filesystem;

namespace {

class FileOpsTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/hpc-fileops-XXXXXX";
        ASSERT_TRUE(::mkdtemp(tmpl));
        m_root = fs::canonical(tmpl);
        m_work = m_root / "work";
        m_outside = m_root / "outside";
        m_state = m_root / "work" / ".hpc_daemon";
        fs::create_directories(m_work / "sub");
        fs::create_directories(m_outside);
        fs::create_directories(m_state);
        m_policy.allowed = {m_work};
        m_policy.hidden = {m_state};
        m_policy.base = m_work;
        m_policy.home = m_work.string();
    }
    void TearDown() override { fs::remove_all(m_root); }

    static void write(const fs::path& p, const std::string& content) { std::ofstream(p) << content; }
    static std::vector<std::string> frames(const std::string& data) {
        return {hpc::files::encodeDataFrame(7, 0, data)};
    }
    static std::string sha(const std::string& data) {
        hpc::files::Sha256 s;
        s.update(data);
        return s.hex();
    }
    /// The code an operation fails with (Internal when it does not fail).
    template <class F>
    static ErrorCode codeOf(F&& f) {
        try {
            f();
        } catch (const Error& e) {
            return e.code();
        }
        return ErrorCode::Internal;
    }

    fs::path m_root, m_work, m_outside, m_state;
    FilePolicy m_policy;
};

}  // namespace

TEST_F(FileOpsTest, AnUploadIsWrittenUnderATemporaryNameAndRenamedOnlyOnCommit) {
    auto up = openUpload(m_policy, "sub/a.bin", false);
    appendUpload(*up, frames("hello"));
    EXPECT_FALSE(fs::exists(m_work / "sub" / "a.bin")) << "nothing under the final name before the commit";
    EXPECT_TRUE(fs::exists(m_work / "sub" / ".a.bin.hpc-part"));
    commitUpload(*up, CommitOptions{5, sha("hello"), 0640, true, 1e9, 1e9}, 022);
    EXPECT_EQ(test::readFile(m_work / "sub" / "a.bin"), "hello");
    EXPECT_FALSE(fs::exists(m_work / "sub" / ".a.bin.hpc-part"));
    EXPECT_EQ(fs::status(m_work / "sub" / "a.bin").permissions(), fs::perms(0640));
    struct stat st {};
    ASSERT_EQ(::stat((m_work / "sub" / "a.bin").c_str(), &st), 0);
    EXPECT_EQ(st.st_mtim.tv_sec, 1000000000) << "-p: the times sent";
}

TEST_F(FileOpsTest, AWrongChecksumLeavesNothingUnderTheFinalName) {
    write(m_work / "keep.txt", "old");
    auto up = openUpload(m_policy, "keep.txt", false);
    appendUpload(*up, frames("new!"));
    EXPECT_EQ(codeOf([&] {
                  commitUpload(*up, CommitOptions{4, sha("other"), {}, false, {}, {}}, 022);
              }),
              ErrorCode::BadRequest);
    discardUpload(*up);
    EXPECT_EQ(test::readFile(m_work / "keep.txt"), "old") << "the file it would replace is untouched";
    EXPECT_FALSE(fs::exists(m_work / ".keep.txt.hpc-part"));
}

TEST_F(FileOpsTest, SetIdBitsNeverComeFromAnAgent) {
    auto up = openUpload(m_policy, "tool", false);
    appendUpload(*up, frames("x"));
    commitUpload(*up, CommitOptions{1, sha("x"), 06755, true, {}, {}}, 022);
    EXPECT_EQ(fs::status(m_work / "tool").permissions(), fs::perms(0755));
}

TEST_F(FileOpsTest, RefusesWritesOutsideTheAllowedDirectories) {
    EXPECT_EQ(codeOf([&] { openUpload(m_policy, (m_outside / "x").string(), false); }), ErrorCode::PathNotAllowed);
    EXPECT_EQ(codeOf([&] { openUpload(m_policy, "../outside/x", false); }), ErrorCode::PathNotAllowed);
    std::string resolved;
    EXPECT_EQ(codeOf([&] { makeDir(m_policy, (m_outside / "d").string(), 0755, resolved); }),
              ErrorCode::PathNotAllowed);
    EXPECT_TRUE(fs::is_empty(m_outside)) << "nothing was written outside";
}

TEST_F(FileOpsTest, ADirectorysModeAndTimesAreSetWithoutFollowingASymlink) {
    std::string resolved;
    setDirAttributes(m_policy, "sub", 04750, 1000.25, 2000.5, resolved);
    EXPECT_EQ(resolved, (m_work / "sub").string());
    struct stat st {};
    ASSERT_EQ(::stat((m_work / "sub").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0750u) << "set-user-id dropped";
    EXPECT_EQ(st.st_atim.tv_sec, 1000);
    EXPECT_EQ(st.st_mtim.tv_sec, 2000);
    EXPECT_EQ(st.st_mtim.tv_nsec, 500000000);
    fs::create_directory_symlink(m_outside, m_work / "esc");
    EXPECT_EQ(codeOf([&] { setDirAttributes(m_policy, "esc", 0700, {}, {}, resolved); }), ErrorCode::BadRequest);
    EXPECT_EQ(codeOf([&] { setDirAttributes(m_policy, (m_outside / "x").string(), 0700, {}, {}, resolved); }),
              ErrorCode::PathNotAllowed);
    write(m_work / "file", "x");
    EXPECT_EQ(codeOf([&] { setDirAttributes(m_policy, "file", 0700, {}, {}, resolved); }), ErrorCode::BadRequest);
    EXPECT_EQ(codeOf([&] { setDirAttributes(m_policy, "missing", 0700, {}, {}, resolved); }), ErrorCode::NotFound);
    ASSERT_EQ(::stat(m_outside.c_str(), &st), 0);
    EXPECT_NE(st.st_mode & 07777, 0700u) << "the symlink's target was not changed";
}

TEST_F(FileOpsTest, ASymlinkOnTheWayOutIsNotFollowedForWrites) {
    fs::create_directory_symlink(m_outside, m_work / "esc");
    EXPECT_EQ(codeOf([&] { openUpload(m_policy, "esc/x", false); }), ErrorCode::PathNotAllowed);
    // The target itself a symlink: followed only when it leads inside.
    write(m_outside / "f", "outside");
    fs::create_symlink(m_outside / "f", m_work / "out");
    EXPECT_EQ(codeOf([&] { openUpload(m_policy, "out", false); }), ErrorCode::PathNotAllowed);
    EXPECT_EQ(test::readFile(m_outside / "f"), "outside");
    write(m_work / "real.txt", "old");
    fs::permissions(m_work / "real.txt", fs::perms(0604));
    fs::create_symlink("real.txt", m_work / "in");
    auto up = openUpload(m_policy, "in", false);
    appendUpload(*up, frames("new"));
    commitUpload(*up, CommitOptions{3, sha("new"), {}, false, {}, {}}, 022);
    EXPECT_EQ(test::readFile(m_work / "real.txt"), "new") << "written through the symlink, as cp does";
    EXPECT_TRUE(fs::is_symlink(m_work / "in"));
    EXPECT_EQ(fs::status(m_work / "real.txt").permissions(), fs::perms(0604)) << "the replaced file's mode is kept";
}

TEST_F(FileOpsTest, SymlinksThatWouldPointOutsideAreNotCreated) {
    std::string resolved;
    EXPECT_EQ(codeOf([&] { makeSymlink(m_policy, "l1", "../outside/f", resolved); }), ErrorCode::PathNotAllowed);
    EXPECT_EQ(codeOf([&] { makeSymlink(m_policy, "l2", "/etc/passwd", resolved); }), ErrorCode::PathNotAllowed);
    fs::create_directory_symlink(m_outside, m_work / "esc");
    EXPECT_EQ(codeOf([&] { makeSymlink(m_policy, "l3", "esc/anything", resolved); }), ErrorCode::PathNotAllowed);
    EXPECT_FALSE(fs::exists(fs::symlink_status(m_work / "l1")));
    makeSymlink(m_policy, "l4", "sub/not-yet-there", resolved);
    EXPECT_EQ(fs::read_symlink(m_work / "l4"), "sub/not-yet-there");
    makeSymlink(m_policy, "l4", "sub", resolved);
    EXPECT_EQ(fs::read_symlink(m_work / "l4"), "sub") << "an existing symlink is replaced";
}

TEST_F(FileOpsTest, TheDaemonsStateIsNeitherReadNorWritten) {
    write(m_state / "state.db", "the API key");
    EXPECT_EQ(codeOf([&] { openUpload(m_policy, ".hpc_daemon/state.db", false); }), ErrorCode::PathNotAllowed);
    EXPECT_EQ(codeOf([&] { openDownload(m_policy, ".hpc_daemon/state.db", 0); }), ErrorCode::PathNotAllowed);
    std::string resolved;
    EXPECT_EQ(codeOf([&] { statPath(m_policy, ".hpc_daemon", resolved); }), ErrorCode::PathNotAllowed);
    fs::create_symlink(m_state / "state.db", m_work / "sneaky");
    EXPECT_EQ(codeOf([&] { openDownload(m_policy, "sneaky", 0); }), ErrorCode::PathNotAllowed);
    EXPECT_EQ(test::readFile(m_state / "state.db"), "the API key");
}

TEST_F(FileOpsTest, ClearErrorsForMissingPathsDirectoriesAndNonRegularFiles) {
    EXPECT_EQ(codeOf([&] { openDownload(m_policy, "missing", 0); }), ErrorCode::NotFound);
    EXPECT_EQ(codeOf([&] { openUpload(m_policy, "no/such/dir/x", false); }), ErrorCode::NotFound);
    EXPECT_EQ(codeOf([&] { openDownload(m_policy, "sub", 0); }), ErrorCode::BadRequest);
    EXPECT_EQ(codeOf([&] { openUpload(m_policy, "sub", false); }), ErrorCode::BadRequest);
    ASSERT_EQ(::mkfifo((m_work / "fifo").c_str(), 0600), 0);
    EXPECT_EQ(codeOf([&] { openDownload(m_policy, "fifo", 0); }), ErrorCode::BadRequest) << "and it did not block";
}

TEST_F(FileOpsTest, AnUploadWhoseTemporaryFileAnotherReplacedIsNotRenamedOverTheTarget) {
    write(m_work / "t", "old");
    auto first = openUpload(m_policy, "t", false);
    appendUpload(*first, frames("first"));
    // The same target by another path: the second upload starts its own
    // temporary file under the same name.
    auto second = openUpload(m_policy, "./t", false);
    EXPECT_EQ(codeOf([&] {
                  commitUpload(*first, CommitOptions{5, sha("first"), {}, false, {}, {}}, 022);
              }),
              ErrorCode::Limit);
    EXPECT_EQ(test::readFile(m_work / "t"), "old") << "the target was not replaced by the other upload's file";
    discardUpload(*first);
    EXPECT_TRUE(fs::exists(m_work / ".t.hpc-part")) << "the other upload's temporary file is not the first's to remove";
    appendUpload(*second, frames("second"));
    commitUpload(*second, CommitOptions{6, sha("second"), {}, false, {}, {}}, 022);
    EXPECT_EQ(test::readFile(m_work / "t"), "second");
}

TEST_F(FileOpsTest, AResumedUploadHashesWhatIsAlreadyThere) {
    {
        auto up = openUpload(m_policy, "big", false);
        appendUpload(*up, frames("first half "));
    }
    auto up = openUpload(m_policy, "big", true);
    EXPECT_EQ(up->size, 11u);
    EXPECT_TRUE(hashSome(*up, 1 << 20));
    EXPECT_EQ(up->sha.hex(), sha("first half "));
    appendUpload(*up, {hpc::files::encodeDataFrame(7, 11, "second")});
    commitUpload(*up, CommitOptions{17, sha("first half second"), {}, false, {}, {}}, 022);
    EXPECT_EQ(test::readFile(m_work / "big"), "first half second");
    auto fresh = openUpload(m_policy, "big", false);
    EXPECT_EQ(fresh->size, 0u) << "without resume an earlier part is replaced";
}

TEST_F(FileOpsTest, ADownloadNoticesAFileThatChangedWhileItWasRead) {
    write(m_work / "log", std::string(std::size_t{600} * 1024, 'a'));
    auto d = openDownload(m_policy, "log", 0);
    EXPECT_EQ(readDownload(*d, 3, std::uint64_t{256} * 1024).size(), 1u);
    std::ofstream(m_work / "log", std::ios::app) << "more";
    EXPECT_EQ(codeOf([&] { readDownload(*d, 3, 1 << 20); }), ErrorCode::BadRequest);
}

TEST_F(FileOpsTest, ADownloadSendsFramesThatCarryTheirOffset) {
    std::string data(std::size_t{300} * 1024, 'x');
    data[0] = '\0';
    data.back() = '\xff';
    write(m_work / "bin", data);
    auto d = openDownload(m_policy, "bin", 0);
    auto f = readDownload(*d, 9, 1 << 20);
    ASSERT_EQ(f.size(), 2u);
    auto second = hpc::files::decodeDataFrame(f[1]);
    ASSERT_TRUE(second);
    EXPECT_EQ(second->channel, 9u);
    EXPECT_EQ(second->offset, 256u * 1024);
    EXPECT_EQ(std::string(second->data), data.substr(std::size_t{256} * 1024));
    EXPECT_EQ(d->sha.hex(), sha(data));
}

TEST(FileWire, PathsThatAreNotUtf8TravelAsBase64AndComeBackTheSame) {
    std::string name = "a b\n\xff\xfe.bin";
    boost::json::object o;
    hpc::files::putPath(o, "path", name);
    EXPECT_EQ(o.at("path_encoding").as_string(), "base64");
    EXPECT_EQ(hpc::files::optPath(o, "path"), name);
    boost::json::object nul{{"path", std::string("a\0b", 3)}};
    EXPECT_THROW(hpc::files::optPath(nul, "path"), Error);
    EXPECT_EQ(hpc::files::displayPath(name), "a b\\x0a\\xff\\xfe.bin");
    EXPECT_EQ(hpc::files::displayPath("été"), "été");
}

TEST(FileWire, AFrameShorterThanItsHeaderIsRefused) {
    EXPECT_FALSE(hpc::files::decodeDataFrame(std::string(11, '\0')));
    // The decoded frame is a view into the encoded one: keep that alive.
    std::string frame = hpc::files::encodeDataFrame(0x40000001u, (1ULL << 40) + 5, "z");
    auto f = hpc::files::decodeDataFrame(frame);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->channel, 0x40000001u);
    EXPECT_EQ(f->offset, (1ULL << 40) + 5);
    EXPECT_EQ(f->data, "z");
}
