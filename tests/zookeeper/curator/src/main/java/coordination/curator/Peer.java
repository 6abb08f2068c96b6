package coordination.curator;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Random;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderSelector;
import org.apache.curator.framework.recipes.leader.LeaderSelectorListenerAdapter;
import org.apache.curator.framework.recipes.leader.Participant;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.StandardLockInternalsDriver;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.zookeeper.data.Stat;

/**
 * A Curator peer that speaks the holder protocol of {@code coordination.testing.holder}.
 *
 * <pre>
 * java -cp ... coordination.curator.Peer CONNECT PATH [--recipe mutex|selector|latch] [--id ID]
 *     [--hold S | --hold MIN:MAX] [--loop] [--count N] [--rest S] [--spans FILE] [--label L]
 *     [--commands] [--session-timeout MS]
 * java -cp ... coordination.curator.Peer CONNECT PATH --recipe mutex|selector|latch --query
 * </pre>
 *
 * Events go to stdout, one line each: {@code <event> <token or -> <time> [detail]}, the time
 * from {@link System#nanoTime()}, which on Linux is CLOCK_MONOTONIC like Python's
 * {@code time.monotonic()}: {@code acquiring}, {@code held} (the token is the czxid of the
 * peer's node), {@code releasing}, {@code released}, {@code state} (a connection state). With
 * {@code --spans} the holdings are appended to a shared span log in the holder's format. With
 * {@code --commands}, stdin takes {@code release} (end the current hold) and {@code exit}.
 * {@code --query} prints the participants as Curator sees them, in its order (for a mutex, its
 * participant nodes with their data as the id), one line each:
 * {@code participant <1 if leader else 0> <id>}, then {@code end}.
 */
public final class Peer {
    private static final Object OUTPUT = new Object();

    private Peer() {}

    static double now() {
        return System.nanoTime() / 1e9;
    }

    static double emit(String event, Long token, String detail) {
        double at = now();
        String line = String.format("%s %s %.6f", event, token == null ? "-" : token.toString(), at);
        if (detail != null && !detail.isEmpty()) {
            line += " " + detail;
        }
        synchronized (OUTPUT) {
            System.out.println(line);
            System.out.flush();
        }
        return at;
    }

    /** One way of holding: a Curator recipe on the path. */
    interface Holding {
        void acquire() throws Exception;

        /** The full path of this peer's node, while it holds. */
        String node() throws Exception;

        void release() throws Exception;
    }

    static final class Mutex implements Holding {
        private final InterProcessMutex mutex;

        Mutex(CuratorFramework client, String path) {
            mutex = new InterProcessMutex(client, path);
        }

        public void acquire() throws Exception {
            mutex.acquire();
        }

        public String node() throws Exception {
            return mutex.getParticipantNodes().iterator().next(); // the owner: this peer
        }

        public void release() throws Exception {
            mutex.release();
        }
    }

    static final class Selector implements Holding {
        private final CuratorFramework client;
        private final String path;
        private final String id;
        private LeaderSelector selector;
        private final Semaphore leading = new Semaphore(0);
        private final Semaphore resign = new Semaphore(0);
        private final Semaphore resigned = new Semaphore(0);

        Selector(CuratorFramework client, String path, String id) {
            this.client = client;
            this.path = path;
            this.id = id;
        }

        public void acquire() throws Exception {
            selector = new LeaderSelector(client, path, new LeaderSelectorListenerAdapter() {
                @Override
                public void takeLeadership(CuratorFramework c) throws Exception {
                    leading.release();
                    try {
                        resign.acquire();
                    } finally {
                        resigned.release();
                    }
                }
            });
            selector.setId(id);
            selector.start();
            leading.acquire();
        }

        public String node() throws Exception {
            return firstChild(client, path, "lock-");
        }

        public void release() throws Exception {
            resign.release();
            resigned.acquire();
            selector.close();
        }
    }

    static final class Latch implements Holding {
        private final CuratorFramework client;
        private final String path;
        private final String id;
        private LeaderLatch latch;

        Latch(CuratorFramework client, String path, String id) {
            this.client = client;
            this.path = path;
            this.id = id;
        }

        public void acquire() throws Exception {
            latch = new LeaderLatch(client, path, id);
            latch.start();
            latch.await();
        }

        public String node() {
            return latch.getOurPath();
        }

        public void release() throws Exception {
            latch.close();
        }
    }

    static String firstChild(CuratorFramework client, String path, String lockName) throws Exception {
        List<String> children = new ArrayList<>(client.getChildren().forPath(path));
        children.sort((a, b) -> StandardLockInternalsDriver.standardFixForSorting(a, lockName)
                .compareTo(StandardLockInternalsDriver.standardFixForSorting(b, lockName)));
        return path + "/" + children.get(0);
    }

    /** The contenders of an InterProcessMutex in its order, their data as the id. */
    static Collection<Participant> mutexParticipants(CuratorFramework client, String path) throws Exception {
        List<Participant> found = new ArrayList<>();
        for (String node : new InterProcessMutex(client, path).getParticipantNodes()) {
            String id = new String(client.getData().forPath(node), StandardCharsets.UTF_8);
            found.add(new Participant(id, found.isEmpty()));
        }
        return found;
    }

    static void appendSpan(Path spans, String line) throws Exception {
        // One write on an O_APPEND descriptor: lines of several processes never interleave.
        Files.write(spans, (line + "\n").getBytes(StandardCharsets.UTF_8),
                StandardOpenOption.CREATE, StandardOpenOption.APPEND, StandardOpenOption.WRITE);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: Peer CONNECT PATH [--recipe mutex|selector|latch] [options]");
            System.exit(2);
        }
        String connect = args[0];
        String path = args[1];
        String recipe = "mutex";
        String id = "curator-" + ProcessHandle.current().pid();
        String label = Long.toString(ProcessHandle.current().pid());
        double holdMin = -1;
        double holdMax = -1;
        double rest = 0;
        long count = 0;
        boolean loop = false;
        boolean commands = false;
        boolean query = false;
        int sessionTimeout = 4000;
        Path spans = null;
        for (int i = 2; i < args.length; i++) {
            switch (args[i]) {
                case "--recipe" -> recipe = args[++i];
                case "--id" -> id = args[++i];
                case "--label" -> label = args[++i];
                case "--hold" -> {
                    String[] range = args[++i].split(":");
                    holdMin = Double.parseDouble(range[0]);
                    holdMax = range.length > 1 ? Double.parseDouble(range[1]) : holdMin;
                }
                case "--rest" -> rest = Double.parseDouble(args[++i]);
                case "--count" -> count = Long.parseLong(args[++i]);
                case "--loop" -> loop = true;
                case "--commands" -> commands = true;
                case "--query" -> query = true;
                case "--session-timeout" -> sessionTimeout = Integer.parseInt(args[++i]);
                case "--spans" -> spans = Path.of(args[++i]);
                default -> {
                    System.err.println("unknown option " + args[i]);
                    System.exit(2);
                }
            }
        }
        CuratorFramework client = CuratorFrameworkFactory.newClient(
                connect, sessionTimeout, 15000, new ExponentialBackoffRetry(50, 10));
        client.getConnectionStateListenable().addListener((c, state) -> emit("state", null, state.name()));
        client.start();
        if (!client.blockUntilConnected(30, TimeUnit.SECONDS)) {
            System.err.println("could not connect to " + connect);
            System.exit(1);
        }
        if (query) {
            Collection<Participant> participants = switch (recipe) {
                case "selector" -> new LeaderSelector(client, path, new LeaderSelectorListenerAdapter() {
                    @Override
                    public void takeLeadership(CuratorFramework c) {}
                }).getParticipants();
                case "latch" -> new LeaderLatch(client, path).getParticipants();
                default -> mutexParticipants(client, path);
            };
            for (Participant participant : participants) {
                synchronized (OUTPUT) {
                    System.out.println("participant " + (participant.isLeader() ? 1 : 0) + " " + participant.getId());
                }
            }
            System.out.println("end");
            System.out.flush();
            client.close();
            System.exit(0);
        }
        BlockingQueue<String> releases = new LinkedBlockingQueue<>();
        if (commands) {
            Thread reader = new Thread(() -> {
                try (var in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in, StandardCharsets.UTF_8))) {
                    String line;
                    while ((line = in.readLine()) != null) {
                        String command = line.trim();
                        if (command.equals("release")) {
                            releases.add(command);
                        } else if (command.equals("exit")) {
                            Runtime.getRuntime().halt(0);
                        }
                    }
                } catch (java.io.IOException ignored) {
                    // stdin closed: no more commands
                }
            });
            reader.setDaemon(true);
            reader.start();
        }
        Random random = new Random();
        final String finalId = id;
        final String finalPath = path;
        for (long round = 0; count == 0 || round < count; round++) {
            Holding holding = switch (recipe) {
                case "mutex" -> new Mutex(client, finalPath);
                case "selector" -> new Selector(client, finalPath, finalId);
                case "latch" -> new Latch(client, finalPath, finalId);
                default -> throw new IllegalArgumentException("unknown recipe " + recipe);
            };
            emit("acquiring", null, null);
            holding.acquire();
            Stat stat = client.checkExists().forPath(holding.node());
            long token = stat.getCzxid();
            double start = emit("held", token, null);
            if (spans != null) {
                appendSpan(spans, String.format("%s %d %.6f - acquired", label, token, start));
            }
            if (holdMin >= 0) {
                double hold = holdMin + (holdMax - holdMin) * random.nextDouble();
                releases.poll((long) (hold * 1e9), TimeUnit.NANOSECONDS);
            } else {
                releases.take();
            }
            double end = emit("releasing", token, null);
            if (spans != null) {
                appendSpan(spans, String.format("%s %d %.6f %.6f released", label, token, start, end));
            }
            holding.release();
            emit("released", token, null);
            if (!loop) {
                break;
            }
            if (rest > 0) {
                Thread.sleep((long) (rest * 1000));
            }
        }
        client.close();
        System.exit(0); // not left to Curator's and ZooKeeper's threads to end
    }
}
