#include "errors.hpp"
#include "prompter.hpp"
#include "service_manager.hpp"
#include "skill_catalog.hpp"

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

TEST(RegisteredSkill, IsTheBuiltInsMarkdownFollowedByTheOwnersInstructions) {
    const auto* mila = ctl::findBuiltinSkill("mila-hpc");
    ASSERT_NE(mila, nullptr);
    EXPECT_EQ(ctl::findBuiltinSkill("2"), mila) << "numbered as the interview lists them";
    EXPECT_EQ(ctl::findBuiltinSkill("mila"), nullptr);
    EXPECT_EQ(ctl::skillTitle(*mila), "Mila cluster");

    auto plain = ctl::registeredSkill("mila-hpc", "");
    EXPECT_EQ(plain.name, "mila-hpc");
    EXPECT_EQ(plain.text, std::string(mila->text));
    EXPECT_EQ(plain.version, ctl::skillVersion(*mila)) << "without instructions: the built-in's own version";

    auto with = ctl::registeredSkill("mila-hpc", "Use account rrg-lab.");
    EXPECT_EQ(with.text.rfind(std::string(mila->text).substr(0, 40), 0), 0u);
    EXPECT_NE(with.text.find("## Instructions from this machine's owner\n\nUse account rrg-lab.\n"), std::string::npos);
    EXPECT_NE(with.version, plain.version) << "the version follows the text";
    EXPECT_EQ(with.version, skill::versionOf(with.text));
    EXPECT_TRUE(skill::problem(with.toJson()).empty());
}

TEST(RegisteredSkill, OfADescribedServerIsTheDescriptionAndInstructions) {
    auto s = ctl::registeredSkill("a GPU box in room 12", "Keep one GPU free.");
    EXPECT_EQ(s.name, "a GPU box in room 12");
    EXPECT_EQ(s.text.rfind("# a GPU box in room 12\n", 0), 0u) << s.text;
    EXPECT_NE(s.text.find("Keep one GPU free."), std::string::npos);
}

TEST(RegisteredSkill, OverThePlatformsLimitsIsRefusedWithWhatToShorten) {
    auto refusal = [](const std::string& skill, const std::string& instructions) -> std::string {
        try {
            ctl::registeredSkill(skill, instructions);
        } catch (const Error& e) {
            EXPECT_EQ(e.code(), ErrorCode::BadRequest);
            return e.what();
        }
        return "accepted";
    };
    EXPECT_NE(refusal("plain-server", std::string(skill::kMaxTextBytes, 'i')).find("shorten --instructions"),
              std::string::npos);
    EXPECT_NE(refusal(std::string(300, 'd') + " x", "").find("put the rest in --instructions"), std::string::npos);
    EXPECT_NE(refusal("plain-server", "bad \xff byte").find("not UTF-8"), std::string::npos);
    EXPECT_NE(refusal("plain-server", "an \x1b[2J escape").find("control characters"), std::string::npos);
    // Just under the limit is fine.
    std::size_t room = skill::kMaxTextBytes - skill::withInstructions("# a b\n", "x").size() + 1;
    EXPECT_EQ(refusal("a b", std::string(room, 'i')), "accepted");
}
