import os
import unittest

from workersd import agent

from agentproc import Agent


class AgentAPITest(unittest.TestCase):
    def setUp(self):
        self.agent = Agent().start()
        self.addCleanup(self.agent.close)

    def test_register_and_deregister(self):
        reg = agent.register("py-unit", 40211, labels={"version": "1"}, path=self.agent.socket)
        self.assertEqual(reg["pid"], os.getpid())
        self.assertEqual(reg["job"], "py-unit")
        self.assertTrue(reg["address"].endswith(":40211"), reg)
        self.assertEqual(reg["labels"], {"version": "1"})
        listed = [w["pid"] for w in agent.workers(path=self.agent.socket)]
        self.assertEqual(listed, [os.getpid()])
        # The same request again is idempotent: a retry is safe.
        again = agent.register("py-unit", 40211, labels={"version": "1"}, path=self.agent.socket)
        self.assertEqual(again["id"], reg["id"])
        gone = agent.deregister(path=self.agent.socket)
        self.assertEqual(gone["state"], "deregistered")
        self.assertEqual(agent.workers(path=self.agent.socket), [])

    def test_bad_request_names_the_field(self):
        with self.assertRaises(agent.AgentError) as cm:
            agent.register("bad/job", 40211, path=self.agent.socket)
        e = cm.exception
        self.assertEqual(e.status, 400)
        self.assertEqual(e.field, "job")
        self.assertIn("/", e.error)
        self.assertFalse(e.retryable)
        with self.assertWarns(DeprecationWarning):
            self.assertEqual(e.message, e.error, "the deprecated alias answers the same")
        self.assertEqual(agent.workers(path=self.agent.socket), [])

    def test_unknown_pid_is_404(self):
        with self.assertRaises(agent.AgentError) as cm:
            agent.deregister(pid=os.getpid(), path=self.agent.socket)
        self.assertEqual(cm.exception.status, 404)

    def test_no_agent_is_retryable(self):
        with self.assertRaises(agent.AgentError) as cm:
            agent.register("py-unit", 1, path=os.path.join(self.agent.dir, "absent.sock"))
        self.assertIsNone(cm.exception.status)
        self.assertIsNone(cm.exception.field)
        self.assertTrue(cm.exception.retryable)
        self.assertIn("absent.sock", cm.exception.error)


if __name__ == "__main__":
    unittest.main()
