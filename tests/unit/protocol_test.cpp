#include "protocol.hpp"
#include "util.hpp"
#include "wire.hpp"

#include <gtest/gtest.h>

using namespace hpc;
using namespace hpc::protocol;
namespace json = boost::json;

namespace {

ProtocolError errorOf(std::string_view text, std::size_t max = kMaxEnvelopeBytes) {
    auto r = parse(text, max);
    EXPECT_TRUE(std::holds_alternative<ProtocolError>(r)) << "accepted: " << text;
    return std::holds_alternative<ProtocolError>(r) ? std::get<ProtocolError>(r) : ProtocolError{};
}

Envelope envelopeOf(std::string_view text) {
    auto r = parse(text, kMaxResponseBytes);
    if (auto* e = std::get_if<ProtocolError>(&r)) ADD_FAILURE() << "refused: " << e->message;
    return std::holds_alternative<Envelope>(r) ? std::get<Envelope>(r) : Envelope{};
}

}  // namespace

TEST(Envelope, ParsesAValidRequest) {
    auto e = envelopeOf(R"({"v":1,"type":"exec","id":"x1","daemon_id":"d","payload":{"argv":["true"]}})");
    EXPECT_EQ(e.type, "exec");
    EXPECT_EQ(e.id, "x1");
    EXPECT_EQ(e.daemonId, "d");
    EXPECT_TRUE(e.payload.contains("argv"));
}

TEST(Envelope, RoundTripsThroughSerialize) {
    Envelope e;
    e.type = "exec";
    e.id = "abc";
    e.daemonId = "dd";
    e.agent = {{"id", "cred-1"}};
    e.payload = {{"command", "ls"}};
    auto back = envelopeOf(serialize(e));
    EXPECT_EQ(back.type, "exec");
    EXPECT_EQ(back.id, "abc");
    EXPECT_EQ(back.daemonId, "dd");
    EXPECT_EQ(back.agent.at("id").as_string(), "cred-1");
    EXPECT_EQ(back.payload.at("command").as_string(), "ls");
}

TEST(Envelope, ParsesOkAndErrorResponses) {
    auto ok = envelopeOf(makeOk("r1", {{"x", 1}}));
    EXPECT_TRUE(ok.isResponse());
    EXPECT_TRUE(ok.ok);
    EXPECT_EQ(ok.replyTo, "r1");
    EXPECT_EQ(ok.result.at("x").as_int64(), 1);
    auto err = envelopeOf(makeError("r2", ErrorCode::PathNotAllowed, "no"));
    EXPECT_FALSE(err.ok);
    EXPECT_EQ(err.errorCode, ErrorCode::PathNotAllowed);
    EXPECT_EQ(err.errorMessage, "no");
}

TEST(Envelope, ErrorAboutAnUnreadableFrameHasNullReplyTo) {
    auto err = envelopeOf(makeError({}, ErrorCode::BadRequest, "not JSON"));
    EXPECT_FALSE(err.ok);
    EXPECT_TRUE(err.replyTo.empty());
}

TEST(Envelope, RefusesTextThatIsNotJson) {
    EXPECT_EQ(errorOf("not json").code, ErrorCode::BadRequest);
    EXPECT_EQ(errorOf("").code, ErrorCode::BadRequest);
    EXPECT_EQ(errorOf("{\"v\":1,").code, ErrorCode::BadRequest);
    EXPECT_EQ(errorOf("\xff\xfe").code, ErrorCode::BadRequest);
}

TEST(Envelope, RefusesNumbersADoubleCannotHoldUnderTheRequestsId) {
    // 1e999 parses as infinity, which no peer could read back once forwarded.
    auto err = errorOf(R"({"v":1,"type":"exec","id":"q1","payload":{"timeout_s":1e999}})");
    EXPECT_EQ(err.code, ErrorCode::BadRequest);
    EXPECT_EQ(err.replyTo, "q1");
    EXPECT_EQ(errorOf(R"({"v":1,"type":"exec","id":"q2","payload":{"a":[1,{"b":-1e999}]}})").replyTo, "q2");
    EXPECT_EQ(envelopeOf(R"({"v":1,"type":"exec","id":"q3","payload":{"t":1e-999,"u":1e300}})").id, "q3");
}

TEST(Envelope, AnswersAFrameThatIsNotJsonUnderTheIdItCouldRead) {
    EXPECT_EQ(errorOf(R"({"v":1,"type":"exec","id":"q7","payload":{"timeout_s":Infinity}})").replyTo, "q7");
    EXPECT_EQ(errorOf(R"({"v":1,"id":"q8","payload":{"a":"b"},)").replyTo, "q8");
    // Only a top-level id that came before the fault, and only a valid one.
    EXPECT_EQ(errorOf(R"({"v":1,"payload":{"id":"inner"},"x":Infinity,"id":"late"})").replyTo, "");
    EXPECT_EQ(errorOf(R"({"v":1,"id":")" + std::string(200, 'a') + R"(","x":nope})").replyTo, "");
    EXPECT_EQ(errorOf(R"({"v":1,"id":42,"x":nope})").replyTo, "");
    EXPECT_EQ(errorOf(R"({"payload":{"k":[1,2]},"id":"q9","x":nope})").replyTo, "q9");
}

TEST(Envelope, RefusesJsonThatIsNotAnObject) {
    EXPECT_NE(errorOf("[1,2]").message.find("object"), std::string::npos);
    EXPECT_NE(errorOf("42").message.find("object"), std::string::npos);
    EXPECT_NE(errorOf("null").message.find("object"), std::string::npos);
}

TEST(Envelope, RefusesAMissingOrWrongVersion) {
    EXPECT_NE(errorOf(R"({"type":"exec","id":"a"})").message.find("\"v\""), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":"1","type":"exec","id":"a"})").message.find("integer"), std::string::npos);
    auto e = errorOf(R"({"v":2,"type":"exec","id":"a"})");
    EXPECT_NE(e.message.find("unsupported protocol version 2"), std::string::npos);
    EXPECT_EQ(e.replyTo, "a") << "the error must be matchable to the request";
    EXPECT_EQ(errorOf(R"({"v":1.5,"type":"exec","id":"a"})").code, ErrorCode::BadRequest);
}

TEST(Envelope, RefusesAMissingOrMalformedType) {
    EXPECT_NE(errorOf(R"({"v":1,"id":"a"})").message.find("type"), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":5,"id":"a"})").message.find("type"), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"","id":"a"})").message.find("type"), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"EXEC!","id":"a"})").message.find("type"), std::string::npos);
    EXPECT_EQ(errorOf(R"({"v":1,"type":")" + std::string(65, 'a') + R"(","id":"a"})").code, ErrorCode::BadRequest);
}

TEST(Envelope, RefusesAMissingOrMalformedId) {
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec"})").message.find("\"id\""), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec","id":7})").message.find("\"id\""), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec","id":""})").message.find("\"id\""), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec","id":"has space"})").message.find("\"id\""), std::string::npos);
    EXPECT_EQ(errorOf(R"({"v":1,"type":"exec","id":")" + std::string(129, 'x') + "\"}").code, ErrorCode::BadRequest);
}

TEST(Envelope, RefusesWrongFieldTypes) {
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec","id":"a","payload":[]})").message.find("payload"), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec","id":"a","payload":"x"})").message.find("payload"), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec","id":"a","daemon_id":3})").message.find("daemon_id"), std::string::npos);
    EXPECT_NE(errorOf(R"({"v":1,"type":"exec","id":"a","agent":"me"})").message.find("agent"), std::string::npos);
}

TEST(Envelope, RefusesMalformedResponses) {
    EXPECT_EQ(errorOf(R"({"v":1,"type":"response","ok":true})").code, ErrorCode::BadRequest);
    EXPECT_EQ(errorOf(R"({"v":1,"type":"response","reply_to":"a"})").code, ErrorCode::BadRequest);
    EXPECT_EQ(errorOf(R"({"v":1,"type":"response","reply_to":"a","ok":false})").code, ErrorCode::BadRequest);
    EXPECT_EQ(errorOf(R"({"v":1,"type":"response","reply_to":"a","ok":true,"result":1})").code, ErrorCode::BadRequest);
    EXPECT_EQ(errorOf(R"({"v":1,"type":"response","reply_to":null,"ok":true})").code, ErrorCode::BadRequest);
}

TEST(Envelope, RefusesHugeFramesWithoutParsingThem) {
    std::string huge =
        R"({"v":1,"type":"exec","id":"a","payload":{"stdin":")" + std::string(kMaxEnvelopeBytes, 'x') + "\"}}";
    EXPECT_NE(errorOf(huge).message.find("limit"), std::string::npos);
    // The same frame is fine where responses are expected.
    EXPECT_TRUE(std::holds_alternative<Envelope>(parse(huge, kMaxResponseBytes)));
}

TEST(Envelope, RefusesDeepNesting) {
    std::string deep =
        R"({"v":1,"type":"exec","id":"a","payload":)" + std::string(100, '[') + std::string(100, ']') + "}";
    EXPECT_EQ(errorOf(deep).code, ErrorCode::BadRequest);
}

TEST(Envelope, AcceptsAnUnknownTypeForTheReceiverToAnswer) {
    auto e = envelopeOf(R"({"v":1,"type":"future.thing","id":"a"})");
    EXPECT_EQ(e.type, "future.thing");
}

TEST(Envelope, IgnoresUnknownTopLevelFields) {
    auto e = envelopeOf(R"({"v":1,"type":"ping","id":"a","extra":{"x":1}})");
    EXPECT_EQ(e.type, "ping");
}

TEST(Envelope, KeepsAnUnknownErrorCodeAsInternal) {
    auto e = envelopeOf(R"({"v":1,"type":"response","reply_to":"a","ok":false,"error":{"code":"NEW","message":"m"}})");
    EXPECT_EQ(e.errorCode, ErrorCode::Internal);
    EXPECT_EQ(e.errorMessage, "m");
}

TEST(ChannelFrame, EncodesTheChannelBigEndian) {
    auto f = encodeChannelFrame(0x01020304, "hi");
    ASSERT_EQ(f.size(), 6u);
    EXPECT_EQ(f[0], 1);
    EXPECT_EQ(f[3], 4);
    auto d = decodeChannelFrame(std::span<const char>(f.data(), f.size()));
    ASSERT_TRUE(d);
    EXPECT_EQ(d->channel, 0x01020304u);
    EXPECT_EQ(std::string(d->data.data(), d->data.size()), "hi");
}

TEST(ChannelFrame, RefusesAFrameShorterThanItsHeader) {
    std::string s = "abc";
    EXPECT_FALSE(decodeChannelFrame(std::span<const char>(s.data(), s.size())));
}

TEST(ErrorTable, MapsEveryCodeBothWays) {
    for (auto c : {ErrorCode::BadRequest, ErrorCode::UnknownType, ErrorCode::NotFound, ErrorCode::PathNotAllowed,
                   ErrorCode::NotOwner, ErrorCode::Limit, ErrorCode::Timeout, ErrorCode::Unavailable,
                   ErrorCode::Unauthorized, ErrorCode::StorageFull, ErrorCode::Internal}) {
        EXPECT_EQ(errorCodeFromProtocol(toProtocolCode(c)), c);
        EXPECT_EQ(errorCodeFromDbusName(toDbusName(c)), c);
    }
    EXPECT_EQ(toProtocolCode(ErrorCode::PathNotAllowed), "PATH_NOT_ALLOWED");
    EXPECT_FALSE(errorCodeFromProtocol("NOPE"));
}

TEST(ErrorTable, GivesEachCodeTheHttpStatusItsClientsExpect) {
    EXPECT_EQ(toHttpStatus(ErrorCode::BadRequest), 400);
    EXPECT_EQ(toHttpStatus(ErrorCode::UnknownType), 400);
    EXPECT_EQ(toHttpStatus(ErrorCode::NotFound), 404);
    EXPECT_EQ(toHttpStatus(ErrorCode::PathNotAllowed), 403);
    EXPECT_EQ(toHttpStatus(ErrorCode::NotOwner), 403);
    EXPECT_EQ(toHttpStatus(ErrorCode::Limit), 429);
    EXPECT_EQ(toHttpStatus(ErrorCode::Timeout), 504);
    EXPECT_EQ(toHttpStatus(ErrorCode::Unavailable), 503);
    EXPECT_EQ(toHttpStatus(ErrorCode::Unauthorized), 401);
    EXPECT_EQ(toHttpStatus(ErrorCode::StorageFull), 507);
    EXPECT_EQ(toHttpStatus(ErrorCode::Internal), 500);
}

TEST(PayloadFields, NameTheFieldInTheirErrors) {
    boost::json::object o{{"n", "x"}, {"s", 5}, {"b", 1}};
    try {
        optInt(o, "n", 0, 10);
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("\"n\""), std::string::npos);
    }
    EXPECT_THROW(optString(o, "s"), Error);
    EXPECT_THROW(optBool(o, "b"), Error);
    EXPECT_FALSE(optString(o, "missing"));
    EXPECT_THROW(optInt(boost::json::object{{"n", 11}}, "n", 0, 10), Error);
}

namespace {

/// The BAD_REQUEST message fromPayload gives, or "" when it accepts the payload.
template <typename Spec>
std::string refusal(const boost::json::object& payload) {
    try {
        Spec::fromPayload(payload);
        return "";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::BadRequest) << e.what();
        return e.what();
    }
}

}  // namespace

TEST(ExecWire, WhatTheAgentSendsTheDaemonReadsBack) {
    ExecSpec spec;
    spec.argv = {"printf", "%s", "a b"};
    spec.cwd = "sub";
    spec.stdinData = "input";
    spec.timeoutSeconds = 2.5;
    spec.killGraceSeconds = 1;
    spec.maxOutputBytes = 4096;
    spec.env = {{"A", "1"}, {"B_2", "x=y"}};
    auto back = ExecSpec::fromPayload(spec.toPayload());
    EXPECT_EQ(back.argv, spec.argv);
    EXPECT_TRUE(back.command.empty());
    EXPECT_EQ(back.cwd, spec.cwd);
    EXPECT_EQ(back.stdinData, spec.stdinData);
    EXPECT_EQ(back.timeoutSeconds, spec.timeoutSeconds);
    EXPECT_EQ(back.killGraceSeconds, spec.killGraceSeconds);
    EXPECT_EQ(back.maxOutputBytes, spec.maxOutputBytes);
    EXPECT_EQ(back.env, spec.env);
    EXPECT_EQ(envEntries(back.env), (std::vector<std::string>{"A=1", "B_2=x=y"}));

    ExecSpec shell;
    shell.command = "echo hi | tr h H";
    auto line = ExecSpec::fromPayload(shell.toPayload());
    EXPECT_EQ(line.command, shell.command);
    EXPECT_TRUE(line.argv.empty());
    EXPECT_FALSE(line.cwd || line.timeoutSeconds || line.maxOutputBytes);
}

TEST(ExecWire, RefusesWhatTheDaemonCannotRunWithTheFieldNamed) {
    using namespace std::string_literals;
    EXPECT_EQ(refusal<ExecSpec>({}), "exec needs exactly one of \"argv\" (array of strings) or \"command\" (string)");
    EXPECT_EQ(refusal<ExecSpec>({{"argv", json::array{"a"}}, {"command", "b"}}),
              "exec needs exactly one of \"argv\" (array of strings) or \"command\" (string)");
    EXPECT_EQ(refusal<ExecSpec>({{"command", ""}}), "\"command\" is empty");
    EXPECT_EQ(refusal<ExecSpec>({{"argv", json::array{}}}),
              "\"argv\" must be a non-empty array of at most 4096 strings");
    EXPECT_EQ(refusal<ExecSpec>({{"argv", json::array{1}}}), "\"argv\" must contain only strings");
    EXPECT_EQ(refusal<ExecSpec>({{"argv", json::array{"a\0b"s}}}), "\"argv\" entries must not contain NUL bytes");
    EXPECT_EQ(refusal<ExecSpec>({{"argv", json::array{""}}}), "\"argv\"[0] is empty");
    json::array tooMany(ExecSpec::kMaxArgs + 1, json::value("x"));
    EXPECT_NE(refusal<ExecSpec>({{"argv", tooMany}}), "");
    EXPECT_NE(refusal<ExecSpec>({{"command", "true"}, {"timeout_s", 0}}).find("timeout_s"), std::string::npos);
    EXPECT_NE(refusal<ExecSpec>({{"command", "true"}, {"kill_grace_s", 601}}).find("kill_grace_s"), std::string::npos);
    EXPECT_NE(
        refusal<ExecSpec>({{"command", "true"}, {"max_output_bytes", 4 * 1024 * 1024 + 1}}).find("max_output_bytes"),
        std::string::npos);
    EXPECT_EQ(refusal<ExecSpec>({{"command", "true"}, {"env", json::object{{"BAD NAME", "x"}}}}),
              "invalid environment name \"BAD NAME\"");
    EXPECT_EQ(refusal<ExecSpec>({{"command", "true"}, {"max_output_bytes", 4 * 1024 * 1024}}), "");
}

TEST(JobWire, WhatTheAgentSendsTheDaemonReadsBack) {
    JobSpec spec;
    spec.script = "#!/bin/bash\necho hi\n";
    spec.name = "a job";
    spec.cwd = "/scratch/run";
    spec.sbatchArgs = {"--partition=debug", "-N", "1"};
    spec.env = {{"RUN", "7"}};
    spec.timeLimitSeconds = 60;
    spec.context = json::object{{"step", 3}};
    auto back = JobSpec::fromPayload(spec.toPayload());
    EXPECT_EQ(back.script, spec.script);
    EXPECT_EQ(back.name, spec.name);
    EXPECT_EQ(back.cwd, spec.cwd);
    EXPECT_EQ(back.sbatchArgs, spec.sbatchArgs);
    EXPECT_EQ(back.env, spec.env);
    EXPECT_EQ(back.timeLimitSeconds, spec.timeLimitSeconds);
    ASSERT_TRUE(back.context);
    EXPECT_EQ(*back.context, *spec.context);

    JobSpec bare;
    bare.script = "true\n";
    auto plain = JobSpec::fromPayload(bare.toPayload());
    EXPECT_FALSE(plain.name || plain.cwd || plain.timeLimitSeconds || plain.context);
    EXPECT_TRUE(plain.sbatchArgs.empty() && plain.env.empty());
}

TEST(JobWire, RefusesWhatTheDaemonCannotSubmitWithTheFieldNamed) {
    EXPECT_EQ(refusal<JobSpec>({}), "\"script\" is required");
    EXPECT_EQ(refusal<JobSpec>({{"script", ""}}), "\"script\" is required");
    EXPECT_EQ(refusal<JobSpec>({{"script", 7}}), "\"script\" must be a string");
    EXPECT_NE(refusal<JobSpec>({{"script", std::string(JobSpec::kMaxScriptBytes + 1, 'x')}}), "");
    EXPECT_EQ(refusal<JobSpec>({{"script", "true"}, {"name", "a\nb"}}), "\"name\" must be printable text");
    EXPECT_EQ(refusal<JobSpec>({{"script", "true"}, {"sbatch_args", "-p x"}}),
              "\"sbatch_args\" must be an array of strings");
    EXPECT_EQ(refusal<JobSpec>({{"script", "true"}, {"sbatch_args", json::array{1}}}),
              "\"sbatch_args\" must contain only strings");
    EXPECT_NE(refusal<JobSpec>({{"script", "true"}, {"time_limit", -1}}).find("time_limit"), std::string::npos);
    EXPECT_EQ(refusal<JobSpec>({{"script", "true"}, {"callback", "x"}}), "\"callback\" must be an object");
    EXPECT_EQ(refusal<JobSpec>({{"script", "true"},
                                {"callback", json::object{{"context", std::string(JobSpec::kMaxContextBytes, 'x')}}}}),
              "\"callback.context\" is larger than 64 KiB");
    EXPECT_EQ(refusal<JobSpec>({{"script", "true"}, {"env", json::object{{"1BAD", "x"}}}}),
              "invalid environment name \"1BAD\"");
    // The daemon's policy (allowed directories, the backend, sbatch options) is its own, checked after.
    EXPECT_EQ(refusal<JobSpec>({{"script", "true"}, {"cwd", "/etc"}, {"sbatch_args", json::array{"--output=x"}}}), "");
}

TEST(ExecWire, StdinOfAnyBytesTravelsAsBase64AndComesBackTheSame) {
    ExecSpec spec;
    spec.argv = {"cat"};
    spec.stdinData = std::string("\xff\xfe\0binary", 9);
    auto payload = spec.toPayload();
    EXPECT_EQ(payload.at("stdin_encoding").as_string(), "base64");
    EXPECT_TRUE(isValidUtf8(json::serialize(payload))) << "a text frame must be UTF-8";
    EXPECT_EQ(ExecSpec::fromPayload(payload).stdinData, spec.stdinData);
    EXPECT_EQ(refusal<ExecSpec>({{"argv", json::array{"cat"}}, {"stdin", "!!"}, {"stdin_encoding", "base64"}}),
              "\"stdin\" is not valid base64");
    EXPECT_EQ(refusal<ExecSpec>({{"argv", json::array{"cat"}}, {"stdin", "x"}, {"stdin_encoding", "rot13"}}),
              "\"stdin_encoding\" must be \"utf-8\" or \"base64\"");
}

TEST(PutBytes, TextStaysReadableAndControlBytesNeverGrowPastBase64) {
    json::object o;
    protocol::putBytes(o, "out", "1\n2\n3\n");
    EXPECT_EQ(o.at("out_encoding").as_string(), "utf-8");
    protocol::putBytes(o, "zeros", std::string(3 << 20, '\0'));
    EXPECT_EQ(o.at("zeros_encoding").as_string(), "base64");
    EXPECT_LT(json::serialize(o).size(), 5u << 20) << "3 MiB of NUL bytes escaped would be 18 MiB";
}
