#include "prompter.hpp"
#include "service_manager.hpp"

#include "harness.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

using namespace hpc;

TEST(UnitName, EscapesDaemonIdsExactlyAsSystemdEscapeDoes) {
    for (const char* id : {"mila", "lab-1.mila", "9lives", "a_b", "login.node-2", "x.y.z", "A-Z_0-9"}) {
        auto r = test::runCommand({"systemd-escape", id});
        ASSERT_EQ(r.status, 0) << r.err;
        std::string escaped = r.out.substr(0, r.out.find('\n'));
        EXPECT_EQ(ctl::unitName(id), "hpc-daemon@" + escaped + ".service") << id;
    }
}

TEST(Prompter, SplitsListsAtCommasAndKeepsSpacesInPaths) {
    EXPECT_EQ(ctl::splitList("/a, /b c ,/d"), (std::vector<std::string>{"/a", "/b c", "/d"}));
    EXPECT_EQ(ctl::splitList(" /only "), std::vector<std::string>{"/only"});
    EXPECT_TRUE(ctl::splitList(" , ").empty());
}

TEST(TailOf, KeepsTheLastLines) {
    auto dir = std::filesystem::temp_directory_path() / ("hpc-tail-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    {
        std::ofstream out(dir / "log");
        for (int i = 1; i <= 10; ++i) out << "line " << i << "\n";
    }
    EXPECT_EQ(ctl::tailOf(dir / "log", 2), "line 9\nline 10\n");
    EXPECT_EQ(ctl::tailOf(dir / "missing", 2), "");
    std::filesystem::remove_all(dir);
}
